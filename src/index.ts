/** Public API of the kivi package. */
export { type GenerateCallOptions, KiviModel, type LoadOptions } from './api.js';
export { type CacheSpec, createCache, formatKvSpec, type KvOption, NAMED_SPECS, parseKvSpec } from './cache/spec.js';
export type { CacheDims, KvCache } from './cache/types.js';
export type { FinishReason, GenerateChunk, GenerateOptions, GenerateResult } from './engine/generate.js';
export type { ByteSource, RandomAccess } from './io/source.js';
export { UrlSource, type UrlSourceOptions, urlSource } from './io/source-url.js';
export type { ModelConfig } from './model/config.js';
export * as quant from './quant/quantizer.js';
export { KiviError } from './util/errors.js';
