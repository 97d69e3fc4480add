/**
 * kivi for web pages (bundled as dist/web/kivi.js): load a model from a URL and generate, in the page
 * or inside your own worker (KiviModel), or in a worker kivi starts for you (KiviWorker).
 */
export { type GenerateCallOptions, KiviModel, type LoadOptions } from '../api.js';
export { cacheBytes, peakCacheBytes } from '../cache/budget.js';
export { type CacheSpec, formatKvSpec, type KvOption, NAMED_SPECS, parseKvSpec } from '../cache/spec.js';
export type { FinishReason, GenerateChunk, GenerateOptions, GenerateResult } from '../engine/generate.js';
export type { ByteSource, RandomAccess } from '../io/source.js';
export { UrlSource, type UrlSourceOptions, urlSource } from '../io/source-url.js';
export { KiviError } from '../util/errors.js';
export { KiviWorker, type KiviWorkerOptions, type WorkerChunk } from './client.js';
export type { ModelInfo, RunResult, RunStats, WorkerGenerateOptions } from './protocol.js';
