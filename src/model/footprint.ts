/**
 * How much memory a model's weights take on a back end, from config.json alone, so that a model too big
 * for the back end is refused before a byte of weights is read. One place to update when the weights'
 * storage changes (today every back end holds them in float32).
 */
import { KiviError } from '../util/errors.js';
import type { ModelConfig } from './config.js';

/** Parameters the loaded model holds (embedding, layers, final norm, and an untied output head). */
export function modelParameters(cfg: ModelConfig): number {
  const { hiddenSize: D, numHeads: H, numKvHeads: KV, headDim: d, intermediateSize: I, vocabSize: V, numLayers: L } = cfg;
  const qkv = (H + 2 * KV) * d;
  const layer = D + qkv * D + (cfg.attentionBias ? qkv : 0) + D * H * d + D + 2 * I * D + D * I;
  return V * D + L * layer + D + (cfg.tieWordEmbeddings ? 0 : V * D);
}

/** Bytes per weight on a back end: float32 everywhere today. */
export function bytesPerParameter(_backend: string): number {
  return 4;
}

/** Bytes the weights take on a back end. */
export function weightBytes(cfg: ModelConfig, backend: string): number {
  return modelParameters(cfg) * bytesPerParameter(backend);
}

/** The wasm back end's linear memory: 32-bit addresses, 4096 MiB at most (weights, caches, activations). */
export const WASM_MEMORY_BYTES = 4096 * 2 ** 20;

/** Kept free beside the weights in wasm memory for activations, logits and at least a few caches. */
export const WASM_RUNTIME_RESERVE = 256 * 2 ** 20;

const GiB = (n: number) => `${(n / 2 ** 30).toFixed(2)} GiB`;

/**
 * Refuse a model whose weights cannot fit the back end, naming what can hold it. `hostBytes` is the
 * machine's memory where known (Node): the pure-TypeScript back end keeps weights in ordinary memory.
 */
export function checkFootprint(cfg: ModelConfig, backend: string, hostBytes?: number): void {
  const params = modelParameters(cfg);
  const need = weightBytes(cfg, backend);
  const what = `the model's weights need ${GiB(need)} (${(params / 1e9).toFixed(2)}B parameters × ${bytesPerParameter(backend)} bytes, float32)`;
  const fitsHost = hostBytes === undefined || weightBytes(cfg, 'ts') < hostBytes;
  if (backend === 'wasm' && need + WASM_RUNTIME_RESERVE > WASM_MEMORY_BYTES) {
    const alternative = fitsHost
      ? `the TypeScript back end (--backend ts) keeps them in ordinary memory${hostBytes !== undefined ? ` (this machine has ${GiB(hostBytes)})` : ''}`
      : `nor does this machine's memory (${GiB(hostBytes!)}) hold them: use a smaller model`;
    throw new KiviError(`${what}, more than the wasm back end can hold (${WASM_MEMORY_BYTES / 2 ** 20} MiB of WebAssembly memory, ` +
      `${WASM_RUNTIME_RESERVE / 2 ** 20} MiB of it kept for activations and caches); ${alternative}`);
  }
  // The GPU holds its weights in device memory: the host's says nothing about them.
  if (backend !== 'webgpu' && hostBytes !== undefined && need >= hostBytes) {
    throw new KiviError(`${what}, more than this machine's memory (${GiB(hostBytes)}); use a smaller model`);
  }
}
