/** Messages between a page (client.ts) and the generation worker (worker.ts). Plain data only. */
import type { BackendChoice } from '../kernels/index.js';

export interface ModelInfo {
  /** The model's URL base. */
  url: string;
  /** The last path segment of the URL: the model directory's name. */
  name: string;
  numLayers: number;
  hiddenSize: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  maxPositions: number;
  /** Compute back end the worker runs ('ts', 'wasm', 'webgpu'). */
  backend: string;
  /** What computes, in words (for webgpu: the GPU adapter). */
  device: string;
  /** Threads the back end computes on (the worker's own included). */
  threads: number;
  /** Bytes of weights read. */
  weightBytes: number;
  loadSeconds: number;
}

export interface WorkerGenerateOptions {
  /** Cache spec: 'fp32', 'fp16', 'kivi2', 'kivi4', 'kivi:k=2,v=2,g=32,r=128,residual=fp32', ... */
  kv?: string;
  maxTokens?: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  stop?: string[];
  ignoreEos?: boolean;
}

export type ToWorker =
  | { type: 'load'; url: string; backend?: BackendChoice; threads?: number }
  | { type: 'generate'; id: number; prompt: string | number[]; options: WorkerGenerateOptions }
  | { type: 'cancel'; id: number };

/** Live figures of one generation, sent with every token. */
export interface RunStats {
  /** Tokens generated so far. */
  tokens: number;
  promptTokens: number;
  /** Tokens the cache holds now (prompt + generated fed back). */
  cacheTokens: number;
  /** Bytes the cache holds now (codes, scales, minimums, residual). */
  kvBytes: number;
  /** Seconds from the request to the first token (prefill included). */
  firstTokenSeconds: number;
  /** Decode tokens per second since the first token (0 until the second). */
  tokensPerSecond: number;
}

export interface RunResult extends RunStats {
  text: string;
  ids: number[];
  finishReason: 'stop' | 'length' | 'eos' | 'abort';
  seconds: number;
}

export type FromWorker =
  | { type: 'progress'; done: number; total: number }
  | { type: 'loaded'; info: ModelInfo }
  | { type: 'token'; id: number; token: number | null; text: string; stats: RunStats }
  | { type: 'done'; id: number; result: RunResult }
  /** id is absent for load errors. */
  | { type: 'error'; id?: number; message: string; kivi: boolean };
