/**
 * kivi for web pages (bundled as dist/web/kivi.js): load a model from a URL and generate, in the page
 * or inside your own worker (KiviModel), or in a worker kivi starts for you (KiviWorker).
 */
export { KiviModel, type LoadOptions, type GenerateCallOptions } from '../api.js';
export { KiviWorker, type KiviWorkerOptions, type WorkerChunk } from './client.js';
export type { ModelInfo, RunResult, RunStats, WorkerGenerateOptions } from './protocol.js';
export { urlSource, UrlSource, type UrlSourceOptions } from '../io/source-url.js';
export type { ByteSource, RandomAccess } from '../io/source.js';
export type { GenerateChunk, GenerateOptions, GenerateResult, FinishReason } from '../engine/generate.js';
export { parseKvSpec, formatKvSpec, NAMED_SPECS, type CacheSpec, type KvOption } from '../cache/spec.js';
export { cacheBytes, peakCacheBytes } from '../cache/budget.js';
export { KiviError } from '../util/errors.js';
