/** Public API of the kivi package. */
export { KiviModel, type LoadOptions, type GenerateCallOptions } from './api.js';
export type { GenerateChunk, GenerateOptions, GenerateResult, FinishReason } from './engine/generate.js';
export { parseKvSpec, formatKvSpec, createCache, NAMED_SPECS, type CacheSpec, type KvOption } from './cache/spec.js';
export type { KvCache, CacheDims } from './cache/types.js';
export * as quant from './quant/quantizer.js';
export { KiviError } from './util/errors.js';
export { urlSource, UrlSource, type UrlSourceOptions } from './io/source-url.js';
export type { ByteSource, RandomAccess } from './io/source.js';
export type { ModelConfig } from './model/config.js';
