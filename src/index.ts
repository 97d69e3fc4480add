/** Public API of the kivi package. */
export { KiviModel, type LoadOptions, type GenerateCallOptions } from './api.js';
export type { GenerateChunk, GenerateOptions, GenerateResult, FinishReason } from './engine/generate.js';
export { parseKvSpec, formatKvSpec, createCache, NAMED_SPECS, type CacheSpec, type KvOption } from './cache/spec.js';
export { SequenceCache, type LayerCache, type CacheDims } from './cache/types.js';
export * as quant from './quant/quantizer.js';
export { KiviError } from './util/errors.js';
export { urlSource, UrlSource, type UrlSourceOptions } from './model/source-url.js';
export type { ByteSource, RandomAccess } from './model/source.js';
export type { ModelConfig } from './model/config.js';
