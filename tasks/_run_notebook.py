#!/usr/bin/python3
"""Execute one notebook on the Deno Jupyter kernel, the way `jupyter nbconvert --execute` would.

Used by tasks/notebooks.ts (`deno task notebooks`); run it with /usr/bin/python3 (Debian's
python3-jupyter-client, python3-nbformat). Why not nbconvert: the Deno kernel can report `idle`
before its last output arrives on iopub, and nbconvert stops listening at `idle`, dropping
charts. Here we keep draining iopub until it has been quiet for --grace seconds.

    /usr/bin/python3 tasks/_run_notebook.py notebooks/01_x.ipynb [--write] [--timeout 600]

The kernel runs in the notebook's folder, so `import ... from "../lib/mod.ts"` works, with
NO_COLOR=1 so outputs carry no ANSI codes. The run fails when a cell errors, or when a cell that
should show something shows nothing: its last statement is an expression, or it calls
console.log / display. Mark a cell that shows nothing on purpose with a `// no output` line or
the cell tag "no-output".

Prints one JSON line on stdout: {"notebook", "ok", "cells", "seconds", "failures": [{"cell",
"reason"}]}. Exit status 0 when ok, 1 on failures, 2 on usage or kernel start errors.
With --write the executed notebook (outputs, execution counts) replaces the file, only when the
run is ok.
"""

import argparse
import json
import os
import queue
import re
import sys
import time

import nbformat
from jupyter_client.manager import KernelManager

NO_OUTPUT_MARK = re.compile(r"^\s*//\s*no output\b", re.IGNORECASE | re.MULTILINE)
SHOWS_OUTPUT_CALL = re.compile(r"\b(console\.(log|info|table|dir|error|warn)|display)\s*\(")
NOT_EXPRESSION = re.compile(
    r"^(const|let|var|import|export|function|async\s+function|class|interface|type|enum|if|for|"
    r"while|do|try|switch|return|throw|declare|namespace)\b|^[{}]"
)
CONTINUES_LINE = re.compile(r"([=,+\-*/%&|^<>?:({\[]|=>|\.)\s*$")
STARTS_CONTINUATION = re.compile(r"^\s*([.?:,)\]}]|\+|-(?!-)|\*|/(?![/*])|&&|\|\||\?\?)")


def strip_code(source):
    """Source with comments removed and string contents blanked (newlines included), keeping
    newlines and brackets outside strings. Good enough for notebook cells; regex literals are
    not special-cased."""
    out = []
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if source.startswith("//", i):
            j = source.find("\n", i)
            i = n if j < 0 else j
        elif source.startswith("/*", i):
            j = source.find("*/", i + 2)
            chunk = source[i : n if j < 0 else j + 2]
            out.append("\n" * chunk.count("\n"))
            i = n if j < 0 else j + 2
        elif c in "'\"`":
            j = i + 1
            while j < n and source[j] != c:
                if source[j] == "\\":
                    j += 1
                elif c != "`" and source[j] == "\n":
                    break
                j += 1
            chunk = source[i : j + 1]
            # Newlines inside a template literal are not statement breaks: blank them too.
            out.append(c + "_" * len(chunk[1:-1]) + c)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def last_statement(source):
    """The last top-level statement of a cell (comments and string contents blanked)."""
    code = strip_code(source)
    depth = 0
    start = 0  # index where the current top-level statement starts
    prev_line_end = ""  # last non-blank code line at depth 0, to see if it continues
    line_start = 0
    for i, c in enumerate(code):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        elif c == ";" and depth == 0:
            start = i + 1
        elif c == "\n":
            line = code[line_start:i]
            if line.strip():
                prev_line_end = line
            line_start = i + 1
            if depth == 0:
                rest = code[i + 1 :]
                next_line = rest.split("\n", 1)[0]
                if (
                    next_line.strip()
                    and not CONTINUES_LINE.search(prev_line_end)
                    and not STARTS_CONTINUATION.match(next_line)
                ):
                    start = i + 1
    return code[start:].strip()


def expects_output(cell):
    """Whether an empty result for this cell is a failure (see the module docstring)."""
    source = cell.source
    if NO_OUTPUT_MARK.search(source) or "no-output" in cell.get("metadata", {}).get("tags", []):
        return False
    code = strip_code(source)
    if SHOWS_OUTPUT_CALL.search(code):
        return True
    statement = last_statement(source)
    return bool(statement) and not NOT_EXPRESSION.match(statement)


def run_cell(client, cell, timeout, grace):
    """Execute one cell; return (outputs, execution_count, error_text or None)."""
    msg_id = client.execute(cell.source, store_history=True, allow_stdin=False)
    outputs = []
    clear_pending = False
    execution_count = None
    idle_at = None
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"cell did not finish within {timeout:g} s")
        # After idle, wait only `grace` seconds of silence for late outputs.
        wait = min(deadline - now, grace if idle_at is not None else 1.0)
        try:
            msg = client.get_iopub_msg(timeout=wait)
        except queue.Empty:
            if idle_at is not None:
                break
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        content = msg["content"]
        if kind == "status":
            if content["execution_state"] == "idle":
                idle_at = time.monotonic()
            continue
        if kind == "execute_input":
            execution_count = content.get("execution_count")
            continue
        if kind == "clear_output":
            if content.get("wait"):
                clear_pending = True
            else:
                outputs = []
            continue
        if kind not in ("stream", "display_data", "execute_result", "error", "update_display_data"):
            continue
        if clear_pending:
            outputs = []
            clear_pending = False
        if kind == "update_display_data":
            continue  # in-place updates of earlier displays are not kept, as in nbconvert
        output = nbformat.v4.output_from_msg(msg)
        # Merge consecutive writes to one stream, like nbconvert's coalesce_streams.
        if (
            kind == "stream"
            and outputs
            and outputs[-1].output_type == "stream"
            and outputs[-1].name == output.name
        ):
            outputs[-1].text += output.text
        else:
            outputs.append(output)
    reply = client.get_shell_msg(timeout=max(1.0, deadline - time.monotonic()))
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = client.get_shell_msg(timeout=max(1.0, deadline - time.monotonic()))
    content = reply["content"]
    if execution_count is None:
        execution_count = content.get("execution_count")
    error = None
    errors = [o for o in outputs if o.output_type == "error"]
    if errors:
        error = f"{errors[0].ename}: {errors[0].evalue}"
    elif content.get("status") == "error":
        error = f"{content.get('ename', 'Error')}: {content.get('evalue', '')}"
    return outputs, execution_count, error


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook")
    parser.add_argument("--write", action="store_true", help="save outputs into the notebook")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per cell")
    parser.add_argument("--grace", type=float, default=0.75, help="quiet seconds after idle")
    parser.add_argument("--kernel", default="deno", help="kernel name (jupyter kernelspec list)")
    parser.add_argument(
        "--startup-timeout", type=float, default=120, help="seconds for the kernel to start"
    )
    args = parser.parse_args()

    path = os.path.abspath(args.notebook)
    started = time.monotonic()
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as error:  # noqa: BLE001 - report any unreadable notebook the same way
        print(f"error: cannot read {args.notebook}: {error}", file=sys.stderr)
        return 2
    env = dict(os.environ, NO_COLOR="1")
    km = KernelManager(kernel_name=args.kernel)
    try:
        km.start_kernel(cwd=os.path.dirname(path), env=env)
    except Exception as error:  # noqa: BLE001
        print(
            f"error: cannot start kernel {args.kernel!r}: {error} "
            "(register Deno's with `deno jupyter --install`; see `jupyter kernelspec list`)",
            file=sys.stderr,
        )
        return 2
    client = km.client()
    client.start_channels()
    failures = []
    cells = 0
    try:
        client.wait_for_ready(timeout=args.startup_timeout)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if not cell.source.strip():
                cell.outputs = []
                cell.execution_count = None
                continue
            cells += 1
            try:
                outputs, count, error = run_cell(client, cell, args.timeout, args.grace)
            except TimeoutError as error:
                failures.append({"cell": index, "reason": str(error)})
                break
            cell.outputs = outputs
            cell.execution_count = count
            if error is not None:
                failures.append({"cell": index, "reason": error})
                break  # later cells depend on this one, as with nbconvert
            if not outputs and expects_output(cell):
                failures.append(
                    {
                        "cell": index,
                        "reason": "showed no output, but its last statement is an expression or it "
                        "calls console.log/display; add a `// no output` line if that is intended",
                    }
                )
    except RuntimeError as error:  # wait_for_ready: kernel died or never answered
        failures.append({"cell": None, "reason": f"kernel: {error}"})
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)
    for failure in failures:
        cell = nb.cells[failure["cell"]] if failure["cell"] is not None else None
        tracebacks = [o for o in (cell.outputs if cell else []) if o.output_type == "error"]
        for output in tracebacks:
            print("\n".join(output.traceback), file=sys.stderr)
    # A failed run keeps the committed outputs: only a clean run replaces them.
    if args.write and not failures:
        tmp = path + ".tmp"
        nbformat.write(nb, tmp)
        os.replace(tmp, path)
    print(
        json.dumps(
            {
                "notebook": args.notebook,
                "ok": not failures,
                "cells": cells,
                "seconds": round(time.monotonic() - started, 2),
                "failures": failures,
            }
        )
    )
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
