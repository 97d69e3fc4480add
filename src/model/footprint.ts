/**
 * How much memory a model's weights take on a back end, from config.json and the type the loader will
 * keep its matrices in (the checkpoint's 16-bit type, or float32), so that a model too big for the back
 * end is refused before a byte of weights is read. Matrices take 2 or 4 bytes a parameter; norm weights
 * and biases are float32 everywhere.
 */

import { DTYPE_BYTES, type DType } from '../kernels/types.js';
import { KiviError } from '../util/errors.js';
import type { ModelConfig } from './config.js';

export interface ModelParameters {
  /** Parameters of the weight matrices: embedding, projections, an untied output head. */
  matrix: number;
  /** Parameters of norm weights and biases (float32 whatever the checkpoint). */
  vector: number;
}

/** Parameters the loaded model holds (embedding, layers, final norm, and an untied output head). */
export function modelParameters(cfg: ModelConfig): ModelParameters {
  const { hiddenSize: D, numHeads: H, numKvHeads: KV, headDim: d, intermediateSize: I, vocabSize: V, numLayers: L } = cfg;
  const qkv = (H + 2 * KV) * d;
  const matrix = V * D * (cfg.tieWordEmbeddings ? 1 : 2) + L * (qkv * D + D * H * d + 3 * I * D);
  const vector = L * (2 * D + (cfg.attentionBias ? qkv : 0)) + D;
  return { matrix, vector };
}

/** Bytes the weights take with their matrices kept as `matrices`. */
export function weightBytes(cfg: ModelConfig, matrices: DType): number {
  const p = modelParameters(cfg);
  return p.matrix * DTYPE_BYTES[matrices] + p.vector * 4;
}

/** The wasm back end's linear memory: 32-bit addresses, 4096 MiB at most (weights, caches, activations). */
export const WASM_MEMORY_BYTES = 4096 * 2 ** 20;

/** Kept free beside the weights in wasm memory for activations, logits and at least a few caches. */
export const WASM_RUNTIME_RESERVE = 256 * 2 ** 20;

const GiB = (n: number) => `${(n / 2 ** 30).toFixed(2)} GiB`;
const TYPE_NAMES: Partial<Record<DType, string>> = { f32: 'float32', bf16: 'bf16', f16: 'f16' };

export interface FootprintOptions {
  /** The type the loader keeps the matrices in on this back end. */
  matrices: DType;
  /** The checkpoint's own 16-bit type, when float32 was asked for instead ('--weights f32'). */
  native?: DType;
  /** The machine's memory where known (Node): the TypeScript back end keeps weights in ordinary memory. */
  hostBytes?: number;
}

/** Refuse, in one line, a model whose weights cannot fit the back end, naming what can hold them. */
export function checkFootprint(cfg: ModelConfig, backend: string, o: FootprintOptions): void {
  const p = modelParameters(cfg);
  const need = weightBytes(cfg, o.matrices);
  const what =
    `the model's weights need ${GiB(need)} (${((p.matrix + p.vector) / 1e9).toFixed(2)}B parameters, ` + `matrices as ${TYPE_NAMES[o.matrices] ?? o.matrices})`;
  const { hostBytes } = o;
  // The TypeScript back end keeps the checkpoint's own types (16-bit matrices stay 16-bit).
  const tsNeed = weightBytes(cfg, o.native ?? o.matrices);
  const fitsHost = hostBytes === undefined || tsNeed < hostBytes;
  if (backend === 'wasm' && need + WASM_RUNTIME_RESERVE > WASM_MEMORY_BYTES) {
    const limit =
      `more than the wasm back end can hold (${WASM_MEMORY_BYTES / 2 ** 20} MiB of WebAssembly memory, ` +
      `${WASM_RUNTIME_RESERVE / 2 ** 20} MiB of it kept for activations and caches)`;
    if (o.native !== undefined && weightBytes(cfg, o.native) + WASM_RUNTIME_RESERVE <= WASM_MEMORY_BYTES) {
      throw new KiviError(
        `${what}, ${limit}; with the checkpoint's ${TYPE_NAMES[o.native]} matrices (--weights native) ` +
          `they need ${GiB(weightBytes(cfg, o.native))} and fit`,
      );
    }
    const alternative = fitsHost
      ? `the TypeScript back end (--backend ts) keeps them in ordinary memory${hostBytes !== undefined ? ` (this machine has ${GiB(hostBytes)})` : ''}, ` +
        'or a GPU with the memory (--backend webgpu)'
      : `nor does this machine's memory (${GiB(hostBytes!)}): use a smaller model, or a GPU with the memory (--backend webgpu)`;
    throw new KiviError(`${what}, ${limit}; ${alternative}`);
  }
  // The GPU holds its weights in device memory: the host's says nothing about them.
  if (backend !== 'webgpu' && hostBytes !== undefined && need >= hostBytes) {
    throw new KiviError(`${what}, more than this machine's memory (${GiB(hostBytes)}); use a smaller model, or a GPU with the memory (--backend webgpu)`);
  }
}
