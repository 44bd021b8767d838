#!/usr/bin/env python3
"""PyTorch peer of `deno task bench` (issue #11): the same workloads, on the same shapes, the way plain
PyTorch would run them.

The model follows the code path HF transformers' eager Qwen2 takes
(`models/qwen2/modeling_qwen2.py`: Qwen2RMSNorm, Qwen2RotaryEmbedding, repeat_kv +
eager_attention_forward, Qwen2MLP with SwiGLU, tied lm_head, DynamicCache's torch.cat per step),
LoRA as PEFT's `lora.Linear.forward`, the GRPO loss as TRL `GRPOTrainer._compute_loss`. Module names
are the checkpoint keys, so `data/demo/sft-model` loads name by name. No transformers, peft, trl or
safetensors package: Debian's python3-torch (1.13) is all it needs; run it with /usr/bin/python3.

Workloads (one JSON line each on stdout; progress on stderr):
  grpo_step         (1) the demo GRPO step of configs/demo.yaml: rollout of 8 prompts x 8 completions
                    (temperature 0.8, <= 96 new tokens, KV cache), reward, advantages, then per
                    micro-batch of 16 the reference log-probs (adapter off), policy fwd/bwd (DAPO loss
                    + k3 KL), AdamW; rollout and update timed apart, per completion token.
  rollout           (2) the rollout of (1) as completion tokens/s (from the same runs when both run).
  forward_1.5b      (3a) Qwen2.5-Math-1.5B-shaped model (random weights): forward of 4 x 256 tokens,
                    logits of every position (HF forward default).
  decode_1.5b       (3b) same model: 16 decode steps x 4 rows with the KV cache after a 4 x 256
                    prefill (the prefill is timed apart, not in `seconds`).
  grpo_update_1.5b  (4) same model: one GRPO update on 4 rows x 128 tokens (64 prompt + 64
                    completion), LoRA r16 on q/k/v/o, gradient checkpointing (torch.utils.checkpoint),
                    reference log-probs + policy fwd/bwd + AdamW, with peak RSS.

`--threads N` sets torch's intra-op threads and OpenBLAS's threads (torch.set_num_threads alone
leaves Debian's openblas-pthread at its own default, one thread per core). Medians of `--repeats`
runs after `--warmup` runs. `--check-logits` prints the demo model's logits for fixed prompts
(bench/check_peer_logits.ts compares them with lib/model.ts).

    /usr/bin/python3 bench/peer_torch.py --threads 1 --skip-large
    /usr/bin/python3 bench/peer_torch.py --threads 2 --workload forward_1.5b,decode_1.5b
"""

import argparse
import contextlib
import ctypes
import json
import math
import os
import re
import resource
import statistics
import struct
import sys
import time

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_MODEL = os.path.join(ROOT, "data", "demo", "sft-model")
DEMO_TRAIN = os.path.join(ROOT, "data", "demo", "train.json")

# configs/demo.yaml, the values the demo step relies on.
DEMO = {
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "num_return_sequences": 8,  # TRL num_generations
    "kl_coef": 0.04,  # TRL beta
    "loss_type": "dapo",
    "epsilon": 0.2,
    "epsilon_high": None,  # = epsilon
    "max_new_tokens": 96,
    "temperature": 0.8,
    "per_device_train_batch_size": 16,  # completions per micro-batch
    "gradient_accumulation_steps": 4,  # 16 x 4 = 64 completions = 8 prompts x 8
    "learning_rate": 1.0e-3,
    "weight_decay": 0.0,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1.0e-8,
    "max_grad_norm": 1.0,
    "reward_correct": 1.0,
    "reward_wrong": -1.0,
    "reward_no_answer": -1.0,
    "seed": 42,
}
PLAIN_PROMPT_TEMPLATE = "Question: {question}\nAnswer:"  # lib/tokenizer.ts, prompt_format: plain

# Qwen/Qwen2.5-Math-1.5B config.json (the keys tasks/bench_scale.ts uses).
QWEN25_MATH_1_5B = {
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}
LARGE_BATCH, LARGE_SEQ, LARGE_DECODE_STEPS = 4, 256, 16  # workload (3)
UPDATE_BATCH, UPDATE_PROMPT, UPDATE_COMPLETION = 4, 64, 64  # workload (4): 4 x 128 tokens

WORKLOADS = ["grpo_step", "rollout", "forward_1.5b", "decode_1.5b", "grpo_update_1.5b"]
WORKLOAD_NUMBERS = {
    "1": ["grpo_step"],
    "2": ["rollout"],
    "3": ["forward_1.5b", "decode_1.5b"],
    "4": ["grpo_update_1.5b"],
}
LARGE = {"forward_1.5b", "decode_1.5b", "grpo_update_1.5b"}


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Machine: threads, BLAS, memory


def openblas_libraries():
    """Paths of the loaded libraries that export openblas_set_num_threads (torch -> libblas.so.3)."""
    torch.mm(torch.ones(2, 2), torch.ones(2, 2))  # make sure the BLAS is loaded
    paths = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if "blas" in path or "lapack" in path:
                paths.add(path)
    out = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if hasattr(lib, "openblas_set_num_threads"):
            out.append((path, lib))
    return out


def set_threads(torch_threads, blas_threads):
    """torch intra-op threads and OpenBLAS threads; returns (blas vendor line, blas threads)."""
    torch.set_num_threads(torch_threads)
    vendor, actual = "unknown BLAS", None
    for _, lib in openblas_libraries():
        lib.openblas_set_num_threads(blas_threads)
        lib.openblas_get_config.restype = ctypes.c_char_p
        vendor = lib.openblas_get_config().decode()
        actual = lib.openblas_get_num_threads()
    return vendor, actual


def device_line():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
    except (OSError, AttributeError):
        pass
    return "%s, %d cores, %s" % (cpu, os.cpu_count(), sys.platform)


def reset_peak_rss():
    """Resets the kernel's high-water mark (VmHWM) so the next peak is this workload's own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes():
    try:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def load_average():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# Checkpoint: safetensors read by hand (no safetensors package on Debian 12)

_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def read_safetensors(path):
    """name -> float32 tensor. Layout: u64 header length, JSON header, raw little-endian data."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n :]
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = _ST_DTYPES[info["dtype"]]
        t = torch.frombuffer(bytearray(data[begin:end]), dtype=dtype).reshape(info["shape"])
        out[name] = t.float()
    return out


# ---------------------------------------------------------------------------------------------
# Model: HF modeling_qwen2.py, eager attention


class Qwen2RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class Qwen2RotaryEmbedding(nn.Module):
    def __init__(self, config):
        super().__init__()
        dim = config["hidden_size"] // config["num_attention_heads"]
        base = config["rope_theta"]
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @torch.no_grad()
    def forward(self, x, position_ids):
        inv_freq_expanded = self.inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1)
        position_ids_expanded = position_ids[:, None, :].float()
        freqs = (inv_freq_expanded @ position_ids_expanded).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    cos = cos.unsqueeze(1)  # [B, 1, T, hd]
    sin = sin.unsqueeze(1)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def repeat_kv(hidden_states, n_rep):
    """The equivalent of torch.repeat_interleave(x, dim=1, repeats=n_rep) (HF's docstring)."""
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


class LoraLinear(nn.Module):
    """PEFT lora.Linear: result = base_layer(x) + lora_B(lora_A(dropout(x))) * scaling."""

    def __init__(self, base_layer, r, lora_alpha, lora_dropout):
        super().__init__()
        self.base_layer = base_layer
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False)
        self.lora_dropout = nn.Dropout(p=lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.scaling = lora_alpha / r
        self.disabled = False
        # initialize A the same way as the default for nn.Linear and B to zero (PEFT reset_lora_parameters)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x):
        result = self.base_layer(x)
        if self.disabled:
            return result
        return result + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling


def empty_linear(in_features, out_features, bias):
    """nn.Linear without its kaiming init (the weights are loaded or filled right after)."""
    return torch.nn.utils.skip_init(nn.Linear, in_features, out_features, bias=bias)


class Qwen2Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        h = config["hidden_size"]
        self.num_heads = config["num_attention_heads"]
        self.num_key_value_heads = config["num_key_value_heads"]
        self.head_dim = h // self.num_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.q_proj = empty_linear(h, self.num_heads * self.head_dim, True)
        self.k_proj = empty_linear(h, self.num_key_value_heads * self.head_dim, True)
        self.v_proj = empty_linear(h, self.num_key_value_heads * self.head_dim, True)
        self.o_proj = empty_linear(self.num_heads * self.head_dim, h, False)

    def forward(self, hidden_states, cos, sin, attention_mask, past_key_value):
        bsz, q_len, _ = hidden_states.shape
        hidden_shape = (bsz, q_len, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if past_key_value is not None:  # DynamicCache.update: torch.cat along the sequence
            key_states = torch.cat([past_key_value[0], key_states], dim=-2)
            value_states = torch.cat([past_key_value[1], value_states], dim=-2)
        present = (key_states, value_states)
        # eager_attention_forward
        key_rep = repeat_kv(key_states, self.num_key_value_groups)
        value_rep = repeat_kv(value_states, self.num_key_value_groups)
        attn_weights = torch.matmul(query_states, key_rep.transpose(2, 3)) * self.scaling
        attn_weights = attn_weights + attention_mask
        attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
        attn_output = torch.matmul(attn_weights, value_rep)
        attn_output = attn_output.transpose(1, 2).contiguous()
        attn_output = attn_output.reshape(bsz, q_len, -1)
        return self.o_proj(attn_output), present


class Qwen2MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        h, i = config["hidden_size"], config["intermediate_size"]
        self.gate_proj = empty_linear(h, i, False)
        self.up_proj = empty_linear(h, i, False)
        self.down_proj = empty_linear(i, h, False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen2DecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self_attn = Qwen2Attention(config)
        self.mlp = Qwen2MLP(config)
        self.input_layernorm = Qwen2RMSNorm(config["hidden_size"], config["rms_norm_eps"])
        self.post_attention_layernorm = Qwen2RMSNorm(config["hidden_size"], config["rms_norm_eps"])

    def forward(self, hidden_states, cos, sin, attention_mask, past_key_value=None):
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states, present = self.self_attn(hidden_states, cos, sin, attention_mask, past_key_value)
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = self.mlp(hidden_states)
        hidden_states = residual + hidden_states
        return hidden_states, present

    def forward_no_cache(self, hidden_states, cos, sin, attention_mask):
        """What torch.utils.checkpoint recomputes: the hidden state only."""
        return self.forward(hidden_states, cos, sin, attention_mask)[0]


def causal_mask_4d(attention_mask, q_len, dtype):
    """[B, 1, T, S] additive mask as HF builds it for eager attention: 0 where key s is a real token
    at or before the query (queries are the last T of S keys), finfo(dtype).min elsewhere."""
    bsz, kv_len = attention_mask.shape
    past = kv_len - q_len
    query_index = torch.arange(past, kv_len)[:, None]
    key_index = torch.arange(kv_len)[None, :]
    allowed = (key_index <= query_index)[None, None, :, :] & attention_mask.bool()[:, None, None, :]
    mask = torch.zeros(bsz, 1, q_len, kv_len, dtype=dtype)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


def position_ids_from_mask(attention_mask):
    """HF GenerationMixin: cumsum(mask) - 1, masked positions set to 1."""
    position_ids = attention_mask.long().cumsum(-1) - 1
    position_ids.masked_fill_(attention_mask == 0, 1)
    return position_ids


class Qwen2Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_tokens = torch.nn.utils.skip_init(nn.Embedding, config["vocab_size"], config["hidden_size"])
        self.layers = nn.ModuleList(Qwen2DecoderLayer(config) for _ in range(config["num_hidden_layers"]))
        self.norm = Qwen2RMSNorm(config["hidden_size"], config["rms_norm_eps"])
        self.rotary_emb = Qwen2RotaryEmbedding(config)
        self.gradient_checkpointing = False

    def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, use_cache=False):
        inputs_embeds = self.embed_tokens(input_ids)
        causal_mask = causal_mask_4d(attention_mask, input_ids.shape[1], inputs_embeds.dtype)
        cos, sin = self.rotary_emb(inputs_embeds, position_ids)
        hidden_states = inputs_embeds
        presents = []
        for i, layer in enumerate(self.layers):
            past = past_key_values[i] if past_key_values is not None else None
            if self.gradient_checkpointing and self.training and not use_cache:
                hidden_states = torch.utils.checkpoint.checkpoint(
                    layer.forward_no_cache, hidden_states, cos, sin, causal_mask, use_reentrant=False
                )
                continue
            hidden_states, present = layer(hidden_states, cos, sin, causal_mask, past)
            if use_cache:
                presents.append(present)
        return self.norm(hidden_states), presents


class Qwen2ForCausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = Qwen2Model(config)
        self.lm_head = empty_linear(config["hidden_size"], config["vocab_size"], False)
        if config["tie_word_embeddings"]:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, use_cache=False, logits_to_keep=0):
        hidden_states, presents = self.model(input_ids, attention_mask, position_ids, past_key_values, use_cache)
        # HF: logits_to_keep=0 keeps every position; TRL and generate ask for the last few only.
        kept = hidden_states[:, -logits_to_keep:, :] if logits_to_keep > 0 else hidden_states
        return self.lm_head(kept), presents


def apply_lora(model, r, lora_alpha, lora_dropout, target_modules):
    """PEFT get_peft_model for LoRA: wraps every targeted nn.Linear; freezes everything else."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for layer in model.model.layers:
        for owner in (layer.self_attn, layer.mlp):
            for name in target_modules:
                base = getattr(owner, name, None)
                if isinstance(base, nn.Linear):
                    lora = LoraLinear(base, r, lora_alpha, lora_dropout)
                    setattr(owner, name, lora)
                    wrapped.append(lora)
    return wrapped


@contextlib.contextmanager
def disable_adapter(loras):
    """PEFT `with model.disable_adapter():` the reference model is the base weights."""
    for m in loras:
        m.disabled = True
    try:
        yield
    finally:
        for m in loras:
            m.disabled = False


def lora_parameters(loras):
    return [p for m in loras for p in (m.lora_A.weight, m.lora_B.weight)]


def load_demo_model():
    with open(os.path.join(DEMO_MODEL, "config.json")) as f:
        config = json.load(f)
    model = Qwen2ForCausalLM(config)
    state = read_safetensors(os.path.join(DEMO_MODEL, "model.safetensors"))
    if config["tie_word_embeddings"]:
        state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise KeyError("checkpoint mismatch: missing %s, unexpected %s" % (missing, unexpected))
    return model


def random_model(config, std=0.02):
    """HF _init_weights: normal(0, initializer_range) for linears and embeddings, zero biases,
    RMSNorm weights 1."""
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, std)
    return model


# ---------------------------------------------------------------------------------------------
# Tokenizer: the demo's character-level vocabulary (tokenizer.json, BPE without merges)


class CharTokenizer:
    def __init__(self, directory):
        with open(os.path.join(directory, "tokenizer.json")) as f:
            tok = json.load(f)
        if tok["model"].get("merges"):
            raise ValueError("expected a character-level tokenizer (no merges) in %s" % directory)
        self.vocab = dict(tok["model"]["vocab"])
        for added in tok["added_tokens"]:
            self.vocab[added["content"]] = added["id"]
        self.inverse = {i: s for s, i in self.vocab.items()}
        self.special = {added["id"] for added in tok["added_tokens"]}
        with open(os.path.join(directory, "tokenizer_config.json")) as f:
            tc = json.load(f)
        self.eos_token_id = self.vocab[tc["eos_token"]]
        self.pad_token_id = self.vocab[tc["pad_token"]]

    def encode(self, text):
        try:
            return [self.vocab[c] for c in text]
        except KeyError as e:
            raise ValueError("character %r is not in the demo vocabulary" % e.args[0]) from None

    def decode(self, ids):
        return "".join(self.inverse[i] for i in ids if i not in self.special)


# ---------------------------------------------------------------------------------------------
# Rollout: HF generate's sample loop (temperature; top_k 0 and top_p 1 mean no other warper)


@torch.no_grad()
def generate(model, prompts, *, max_new_tokens, temperature, eos_token_id, pad_token_id, generator):
    """Left-pads `prompts`, samples up to max_new_tokens per row with the KV cache. Returns the
    completion ids per row, up to and including the first EOS."""
    bsz = len(prompts)
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_token_id] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    position_ids = position_ids_from_mask(attention_mask)
    logits, cache = model(input_ids, attention_mask, position_ids, use_cache=True, logits_to_keep=1)
    unfinished = torch.ones(bsz, dtype=torch.bool)
    completions = [[] for _ in range(bsz)]
    for step in range(max_new_tokens):
        probs = F.softmax(logits[:, -1, :] / temperature, dim=-1)
        next_tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
        next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, pad_token_id))
        for b, t in enumerate(next_tokens.tolist()):  # sync point: B ids per token
            if unfinished[b]:
                completions[b].append(t)
        unfinished &= next_tokens != eos_token_id
        if not unfinished.any() or step == max_new_tokens - 1:
            break
        attention_mask = torch.cat([attention_mask, torch.ones(bsz, 1, dtype=attention_mask.dtype)], dim=1)
        position_ids = position_ids[:, -1:] + 1
        logits, cache = model(
            next_tokens[:, None], attention_mask, position_ids, past_key_values=cache, use_cache=True, logits_to_keep=1
        )
    return completions


# ---------------------------------------------------------------------------------------------
# GRPO: TRL GRPOTrainer (_generate_and_score_completions, _get_per_token_logps, _compute_loss)


def boxed_answer(text):
    """Content of the last \\boxed{...}, braces balanced, or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


def accuracy_reward(text, answer):
    predicted = boxed_answer(text)
    if predicted is None:
        return DEMO["reward_no_answer"]
    return DEMO["reward_correct"] if predicted == answer.strip() else DEMO["reward_wrong"]


def group_advantages(rewards, g):
    """(r - mean) / (std + 1e-4) per group, Bessel-corrected std (torch .std(), TRL)."""
    grouped = rewards.view(-1, g)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True)
    return ((grouped - mean) / (std + 1e-4)).view(-1)


def training_batch(prompts, completions, pad_token_id):
    """Prompts left-padded, completions right-padded; completion mask 1 up to and including EOS."""
    p_width = max(len(p) for p in prompts)
    c_width = max(1, max(len(c) for c in completions))
    ids, am, cm = [], [], []
    for p, c in zip(prompts, completions):
        ids.append([pad_token_id] * (p_width - len(p)) + p + c + [pad_token_id] * (c_width - len(c)))
        am.append([0] * (p_width - len(p)) + [1] * (len(p) + len(c)) + [0] * (c_width - len(c)))
        cm.append([1.0] * len(c) + [0.0] * (c_width - len(c)))
    return torch.tensor(ids), torch.tensor(am), torch.tensor(cm), c_width


def selective_log_softmax(logits, index):
    """TRL selective_log_softmax (float32 path: a logsumexp per row to bound memory)."""
    selected_logits = torch.gather(logits, dim=-1, index=index.unsqueeze(-1)).squeeze(-1)
    logsumexp_values = torch.stack([torch.logsumexp(lg, dim=-1) for lg in logits])
    return selected_logits - logsumexp_values


def per_token_logps(model, input_ids, attention_mask, logits_to_keep, temperature):
    """TRL _get_per_token_logps: only the completion positions (+1) reach the LM head.
    NOTE: positions from the mask (as generate and lib/model.ts build them), where TRL's
    training forward passes none and gets 0..T-1 per row; the cost is the same."""
    position_ids = position_ids_from_mask(attention_mask)
    logits, _ = model(input_ids, attention_mask, position_ids, logits_to_keep=logits_to_keep + 1)
    logits = logits[:, :-1, :] / temperature  # [B, C, V]
    return selective_log_softmax(logits, input_ids[:, -logits_to_keep:])


def grpo_loss(logps, ref_logps, advantages, mask, num_items_in_batch):
    """TRL _compute_loss with num_iterations 1 (old logps = logps.detach()), k3 KL, DAPO."""
    eps_low = DEMO["epsilon"]
    eps_high = DEMO["epsilon_high"] if DEMO["epsilon_high"] is not None else DEMO["epsilon"]
    per_token_kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
    coef_1 = torch.exp(logps - logps.detach())
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token_loss1 = coef_1 * advantages.unsqueeze(1)
    per_token_loss2 = coef_2 * advantages.unsqueeze(1)
    per_token_loss = -torch.min(per_token_loss1, per_token_loss2)
    per_token_loss = per_token_loss + DEMO["kl_coef"] * per_token_kl
    if DEMO["loss_type"] != "dapo":
        raise ValueError("Unknown loss type: %s" % DEMO["loss_type"])
    loss = (per_token_loss * mask).sum() / num_items_in_batch
    mean_kl = (per_token_kl * mask).sum() / mask.sum().clamp(min=1.0)
    return loss, mean_kl


class DemoTrainer:
    def __init__(self):
        torch.manual_seed(DEMO["seed"])
        self.model = load_demo_model()
        self.loras = apply_lora(
            self.model, DEMO["lora_r"], DEMO["lora_alpha"], DEMO["lora_dropout"], DEMO["target_modules"]
        )
        self.params = lora_parameters(self.loras)
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=DEMO["learning_rate"],
            betas=(DEMO["adam_beta1"], DEMO["adam_beta2"]),
            eps=DEMO["adam_epsilon"],
            weight_decay=DEMO["weight_decay"],
        )
        self.tokenizer = CharTokenizer(DEMO_MODEL)
        with open(DEMO_TRAIN) as f:
            self.examples = json.load(f)
        self.generator = torch.Generator().manual_seed(DEMO["seed"])

    def prompts_for_step(self, step):
        """Step s takes rows 8s .. 8s+7 of train.json, in file order."""
        per = DEMO["per_device_train_batch_size"] * DEMO["gradient_accumulation_steps"] // DEMO["num_return_sequences"]
        rows = [self.examples[(step * per + i) % len(self.examples)] for i in range(per)]
        return rows

    def rollout(self, rows):
        g = DEMO["num_return_sequences"]
        prompts = [self.tokenizer.encode(PLAIN_PROMPT_TEMPLATE.format(question=r["question"])) for r in rows]
        prompts = [p for p in prompts for _ in range(g)]  # TRL RepeatSampler: groups contiguous
        self.model.eval()  # dropout off while sampling
        completions = generate(
            self.model,
            prompts,
            max_new_tokens=DEMO["max_new_tokens"],
            temperature=DEMO["temperature"],
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            generator=self.generator,
        )
        return prompts, completions

    def update(self, rows, prompts, completions):
        g = DEMO["num_return_sequences"]
        answers = [r["ground_truth"] for r in rows for _ in range(g)]
        texts = [self.tokenizer.decode(c) for c in completions]
        rewards = torch.tensor([accuracy_reward(t, a) for t, a in zip(texts, answers)])
        advantages = group_advantages(rewards, g)
        size = DEMO["per_device_train_batch_size"]
        micro = []
        # Reference log-probs per micro-batch (TRL computes them at generation time, adapter off).
        self.model.eval()
        for start in range(0, len(prompts), size):
            ids, am, cm, c = training_batch(
                prompts[start : start + size], completions[start : start + size], self.tokenizer.pad_token_id
            )
            with torch.no_grad(), disable_adapter(self.loras):
                ref = per_token_logps(self.model, ids, am, c, DEMO["temperature"])
            micro.append((ids, am, cm, c, ref, advantages[start : start + size]))
        num_items = sum(float(m[2].sum()) for m in micro)
        self.model.train()  # LoRA dropout on
        losses = []
        for ids, am, cm, c, ref, adv in micro:
            logps = per_token_logps(self.model, ids, am, c, DEMO["temperature"])
            loss, kl = grpo_loss(logps, ref, adv, cm, num_items)
            loss.backward()  # gradients accumulate over the micro-batches
            losses.append(loss.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, DEMO["max_grad_norm"])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(torch.stack(losses).sum()), float(grad_norm), float(rewards.mean())  # sync point


# ---------------------------------------------------------------------------------------------
# Timing


def median(values):
    return statistics.median(values)


class Bench:
    def __init__(self, args, blas, blas_threads):
        self.args = args
        self.common = {
            "impl": "pytorch",
            "device": device_line(),
            "threads": args.threads,
            "blas_threads": blas_threads,
            "torch": torch.__version__,
            "blas": blas,
            "repeats": args.repeats,
            "warmup": args.warmup,
        }

    def emit(self, workload, fields):
        line = {"workload": workload, **fields, **self.common, "load_average": load_average()}
        print(json.dumps(line), flush=True)

    def runs(self):
        """Indices of the runs: negative ones are warm-up."""
        return range(-self.args.warmup, self.args.repeats)


def bench_demo(bench, want):
    """Workloads (1) and (2): the demo GRPO step; rollout and update timed apart."""
    trainer = DemoTrainer()
    reset_peak_rss()
    records = []
    rollout_only = "grpo_step" not in want
    for run in bench.runs():
        step = run + bench.args.warmup
        rows = trainer.prompts_for_step(step)
        t0 = time.perf_counter()
        prompts, completions = trainer.rollout(rows)
        t1 = time.perf_counter()
        loss = grad_norm = reward = None
        if not rollout_only:
            loss, grad_norm, reward = trainer.update(rows, prompts, completions)
        t2 = time.perf_counter()
        tokens = sum(len(c) for c in completions)
        log(
            "demo run %d: rollout %.3f s, update %.3f s, %d completion tokens (mean length %.1f)%s"
            % (run, t1 - t0, t2 - t1, tokens, tokens / len(completions), " [warm-up]" if run < 0 else "")
        )
        if run >= 0:
            records.append({"rollout": t1 - t0, "update": t2 - t1, "tokens": tokens, "rows": len(completions)})
    peak = peak_rss_bytes()
    tokens = [r["tokens"] for r in records]
    rollout = {
        "seconds": median([r["rollout"] for r in records]),
        "seconds_per_token": median([r["rollout"] / r["tokens"] for r in records]),
        "tokens_per_second": median([r["tokens"] / r["rollout"] for r in records]),
        "completion_tokens": median(tokens),
        "mean_length": median([r["tokens"] / r["rows"] for r in records]),
        "rows": records[0]["rows"],
        "max_new_tokens": DEMO["max_new_tokens"],
        "peak_rss_bytes": peak,
        "runs_seconds": [r["rollout"] for r in records],
    }
    if "grpo_step" in want:
        step_seconds = [r["rollout"] + r["update"] for r in records]
        bench.emit(
            "grpo_step",
            {
                "seconds": median(step_seconds),
                "seconds_per_token": median([s / r["tokens"] for s, r in zip(step_seconds, records)]),
                "tokens_per_second": median([r["tokens"] / s for s, r in zip(step_seconds, records)]),
                "rollout_seconds": rollout["seconds"],
                "rollout_seconds_per_token": rollout["seconds_per_token"],
                "update_seconds": median([r["update"] for r in records]),
                "update_seconds_per_token": median([r["update"] / r["tokens"] for r in records]),
                "completion_tokens": rollout["completion_tokens"],
                "mean_length": rollout["mean_length"],
                "peak_rss_bytes": peak,
                "runs_seconds": step_seconds,
                "config": "configs/demo.yaml: 8 prompts x 8, T 0.8, <= 96 new tokens, 4 micro-batches of 16, "
                "dapo + 0.04 k3 KL, LoRA r16 a32 q/k/v/o, AdamW lr 1e-3",
            },
        )
    if "rollout" in want:
        bench.emit("rollout", rollout)


def large_config(args):
    config = dict(QWEN25_MATH_1_5B)
    config["num_hidden_layers"] = args.layers
    return config


def bench_large_inference(bench, model, want):
    """Workload (3): forward of 4 x 256 tokens; 16 decode steps x 4 rows with the KV cache."""
    g = torch.Generator().manual_seed(0)
    vocab = model.config["vocab_size"]
    ids = torch.randint(0, vocab, (LARGE_BATCH, LARGE_SEQ), generator=g)
    mask = torch.ones_like(ids)
    positions = position_ids_from_mask(mask)
    model.eval()
    if "forward_1.5b" in want:
        reset_peak_rss()
        times = []
        for run in bench.runs():
            t0 = time.perf_counter()
            with torch.no_grad():
                logits, _ = model(ids, mask, positions)
            dt = time.perf_counter() - t0
            log("forward_1.5b run %d: %.2f s, logits %s" % (run, dt, list(logits.shape)))
            del logits
            if run >= 0:
                times.append(dt)
        n = LARGE_BATCH * LARGE_SEQ
        bench.emit(
            "forward_1.5b",
            {
                "seconds": median(times),
                "seconds_per_token": median(times) / n,
                "tokens_per_second": n / median(times),
                "batch": LARGE_BATCH,
                "seq": LARGE_SEQ,
                "layers": model.config["num_hidden_layers"],
                "peak_rss_bytes": peak_rss_bytes(),
                "runs_seconds": times,
            },
        )
    if "decode_1.5b" in want:
        reset_peak_rss()
        prefill_times, decode_times = [], []
        for run in bench.runs():
            with torch.no_grad():
                t0 = time.perf_counter()
                logits, cache = model(ids, mask, positions, use_cache=True, logits_to_keep=1)
                t1 = time.perf_counter()
                am, pos = mask, positions[:, -1:]
                for _ in range(LARGE_DECODE_STEPS):
                    probs = F.softmax(logits[:, -1, :], dim=-1)  # temperature 1
                    nxt = torch.multinomial(probs, 1, generator=g)  # [B, 1]
                    nxt.tolist()  # sync point: B ids per token, as a rollout reads them
                    am = torch.cat([am, torch.ones(LARGE_BATCH, 1, dtype=am.dtype)], dim=1)
                    pos = pos + 1
                    logits, cache = model(nxt, am, pos, past_key_values=cache, use_cache=True, logits_to_keep=1)
                t2 = time.perf_counter()
            del logits, cache
            log(
                "decode_1.5b run %d: prefill %.2f s, %d decode steps %.2f s"
                % (run, t1 - t0, LARGE_DECODE_STEPS, t2 - t1)
            )
            if run >= 0:
                prefill_times.append(t1 - t0)
                decode_times.append(t2 - t1)
        n = LARGE_BATCH * LARGE_DECODE_STEPS
        bench.emit(
            "decode_1.5b",
            {
                "seconds": median(decode_times),
                "seconds_per_token": median(decode_times) / n,
                "seconds_per_step": median(decode_times) / LARGE_DECODE_STEPS,
                "tokens_per_second": n / median(decode_times),
                "prefill_seconds": median(prefill_times),
                "batch": LARGE_BATCH,
                "prompt_tokens": LARGE_SEQ,
                "decode_steps": LARGE_DECODE_STEPS,
                "layers": model.config["num_hidden_layers"],
                "peak_rss_bytes": peak_rss_bytes(),
                "runs_seconds": decode_times,
            },
        )


def bench_large_update(bench, model):
    """Workload (4): one GRPO update of LoRA r16 q/k/v/o on 4 x (64 + 64) tokens, checkpointed."""
    loras = apply_lora(model, DEMO["lora_r"], DEMO["lora_alpha"], DEMO["lora_dropout"], DEMO["target_modules"])
    params = lora_parameters(loras)
    optimizer = torch.optim.AdamW(params, lr=DEMO["learning_rate"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    model.model.gradient_checkpointing = True
    g = torch.Generator().manual_seed(1)
    vocab = model.config["vocab_size"]
    c = UPDATE_COMPLETION
    ids = torch.randint(0, vocab, (UPDATE_BATCH, UPDATE_PROMPT + c), generator=g)
    am = torch.ones_like(ids)
    cm = torch.ones(UPDATE_BATCH, c)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    reset_peak_rss()
    records = []
    for run in bench.runs():
        t0 = time.perf_counter()
        model.eval()
        with torch.no_grad(), disable_adapter(loras):
            ref = per_token_logps(model, ids, am, c, DEMO["temperature"])
        t1 = time.perf_counter()
        model.train()
        logps = per_token_logps(model, ids, am, c, DEMO["temperature"])
        loss, _ = grpo_loss(logps, ref, advantages, cm, float(cm.sum()))
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, DEMO["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss)  # sync point
        t3 = time.perf_counter()
        del logps, loss, ref
        log(
            "grpo_update_1.5b run %d: ref %.2f s, policy fwd+bwd %.2f s, AdamW %.3f s"
            % (run, t1 - t0, t2 - t1, t3 - t2)
        )
        if run >= 0:
            records.append((t1 - t0, t2 - t1, t3 - t2))
    model.model.gradient_checkpointing = False
    n = UPDATE_BATCH * (UPDATE_PROMPT + c)
    total = [sum(r) for r in records]
    bench.emit(
        "grpo_update_1.5b",
        {
            "seconds": median(total),
            "seconds_per_token": median(total) / n,
            "tokens_per_second": n / median(total),
            "ref_seconds": median([r[0] for r in records]),
            "policy_seconds": median([r[1] for r in records]),
            "optimizer_seconds": median([r[2] for r in records]),
            "batch": UPDATE_BATCH,
            "prompt_tokens": UPDATE_PROMPT,
            "completion_tokens": c,
            "layers": model.config["num_hidden_layers"],
            "gradient_checkpointing": True,
            "trainable_params": sum(p.numel() for p in params),
            "peak_rss_bytes": peak_rss_bytes(),
            "runs_seconds": total,
        },
    )


# ---------------------------------------------------------------------------------------------
# --check-logits: the same model as lib/model.ts?

CHECK_QUESTIONS = [
    "Ben shares 35 cookies equally among 5 friends. How many cookies does each friend get?",
    "Jack is 27 years old. How old was Jack 17 years ago?",
]


def check_lora_value(module_index, flat_index):
    """Deterministic LoRA values bench/check_peer_logits.ts rebuilds exactly (float64 -> float32)."""
    return (((flat_index * 7919 + module_index * 104729) % 1000) / 1000.0 - 0.5) * 0.2


def check_logits():
    """Logits of the demo model for two left-padded prompts, adapter off and with fixed LoRA values;
    plus a self-check that prefill + KV-cache decoding gives the full forward's logits."""
    torch.manual_seed(0)
    model = load_demo_model()
    tokenizer = CharTokenizer(DEMO_MODEL)
    prompts = [tokenizer.encode(PLAIN_PROMPT_TEMPLATE.format(question=q)) for q in CHECK_QUESTIONS]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    positions = position_ids_from_mask(mask)
    model.eval()
    with torch.no_grad():
        base, _ = model(ids, mask, positions)
        # Self-check: prefill all but the last 8 tokens, then decode them one at a time.
        split = width - 8
        logits, cache = model(ids[:, :split], mask[:, :split], positions[:, :split], use_cache=True, logits_to_keep=1)
        decode_diff = (logits[:, -1] - base[:, split - 1]).abs().max().item()
        for t in range(split, width):
            logits, cache = model(
                ids[:, t : t + 1], mask[:, : t + 1], positions[:, t : t + 1], past_key_values=cache, use_cache=True
            )
            decode_diff = max(decode_diff, (logits[:, -1] - base[:, t]).abs().max().item())
    loras = apply_lora(model, DEMO["lora_r"], DEMO["lora_alpha"], 0.0, DEMO["target_modules"])
    names = sorted(
        ("model.layers.%d.self_attn.%s" % (i, m), lora)
        for i, layer in enumerate(model.model.layers)
        for m in DEMO["target_modules"]
        for lora in [getattr(layer.self_attn, m)]
    )
    keys = []
    for name, lora in names:  # PEFT key order, sorted: ...lora_A.weight < ...lora_B.weight
        keys.append(("base_model.model.%s.lora_A.weight" % name, lora.lora_A.weight))
        keys.append(("base_model.model.%s.lora_B.weight" % name, lora.lora_B.weight))
    with torch.no_grad():
        for module_index, (_, w) in enumerate(keys):
            values = [check_lora_value(module_index, k) for k in range(w.numel())]
            w.copy_(torch.tensor(values, dtype=torch.float64).view(w.shape))
        adapted, _ = model(ids, mask, positions)
    print(
        json.dumps(
            {
                "questions": CHECK_QUESTIONS,
                "prompt_template": PLAIN_PROMPT_TEMPLATE,
                "input_ids": ids.tolist(),
                "attention_mask": mask.tolist(),
                "lora": {"lora_r": DEMO["lora_r"], "lora_alpha": DEMO["lora_alpha"], "keys": [k for k, _ in keys]},
                "logits": base.tolist(),
                "logits_lora": adapted.tolist(),
                "kv_cache_max_abs_diff": decode_diff,
                "torch": torch.__version__,
            }
        )
    )


# ---------------------------------------------------------------------------------------------


def parse_workloads(text, skip_large):
    chosen = []
    for part in text.split(","):
        part = part.strip()
        names = WORKLOAD_NUMBERS.get(part, [part] if part in WORKLOADS else None)
        if part == "all":
            names = WORKLOADS
        if names is None:
            raise SystemExit(
                "error: --workload: unknown workload %r; expected all, 1-4 or %s" % (part, ", ".join(WORKLOADS))
            )
        chosen += [n for n in names if n not in chosen]
    if skip_large:
        chosen = [n for n in chosen if n not in LARGE]
    return chosen


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads and OpenBLAS threads (default 1)")
    parser.add_argument("--blas-threads", type=int, default=None, help="OpenBLAS threads, if not --threads")
    parser.add_argument("--workload", default="all", help="comma list: all, 1-4, or %s" % ", ".join(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per workload; medians (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    parser.add_argument("--skip-large", action="store_true", help="skip the 1.5B-shaped workloads (3) and (4)")
    parser.add_argument("--layers", type=int, default=28, help="decoder layers of the 1.5B-shaped model (default 28)")
    parser.add_argument("--check-logits", action="store_true", help="print the demo model's logits for fixed prompts")
    args = parser.parse_args()
    for name in ("threads", "repeats", "layers"):
        if getattr(args, name) < 1:
            raise SystemExit("error: --%s: expected an integer >= 1, got %d" % (name, getattr(args, name)))
    if args.warmup < 0:
        raise SystemExit("error: --warmup: expected an integer >= 0, got %d" % args.warmup)
    blas, blas_threads = set_threads(args.threads, args.blas_threads or args.threads)
    if args.check_logits:
        check_logits()
        return
    want = parse_workloads(args.workload, args.skip_large)
    bench = Bench(args, blas, blas_threads)
    log(
        "peer_torch: torch %s, %s, torch threads %d, BLAS threads %s, workloads %s, load %.2f"
        % (torch.__version__, blas, torch.get_num_threads(), blas_threads, ",".join(want), load_average())
    )
    if "grpo_step" in want or "rollout" in want:
        bench_demo(bench, want)
    large = [w for w in want if w in LARGE]
    if large:
        t0 = time.perf_counter()
        torch.manual_seed(0)
        model = random_model(large_config(args))
        log(
            "1.5B-shaped model, %d layers: built in %.1f s, rss %.2f GB"
            % (args.layers, time.perf_counter() - t0, peak_rss_bytes() / 1e9)
        )
        if "forward_1.5b" in large or "decode_1.5b" in large:
            bench_large_inference(bench, model, large)
        if "grpo_update_1.5b" in large:
            bench_large_update(bench, model)


if __name__ == "__main__":
    main()
