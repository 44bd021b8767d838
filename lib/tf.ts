/**
 * The only module that imports TensorFlow.js. Everything else imports `tf` from here, so the
 * package (and its version, pinned in deno.json) is named in one place.
 *
 * The umbrella package registers the gradients of every op; `lib/backend.ts` chooses the backend.
 *
 * @module
 */
import * as tf from "@tensorflow/tfjs";

export { tf };
