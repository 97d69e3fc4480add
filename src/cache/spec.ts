/**
 * Cache specs: the strings a user passes to `--kv` (and the library's `kv` option) compiled to data, then
 * to a factory of layer caches. A new storage format is a new spec kind and cache class, never a branch
 * in the model.
 */

import type { PagePool } from '../kernels/types.js';
import type { Bits } from '../quant/quantizer.js';
import { isBits } from '../quant/quantizer.js';
import { KiviError } from '../util/errors.js';
import { DenseCache } from './dense.js';
import { type Axis, type FakeOptions, FakeQuantCache } from './fake.js';
import { checkKiviBackend, KiviCache, type KiviOptions, validateKivi } from './kivi.js';
import type { CacheDims, KvCache } from './types.js';

/** A cache spec as data: what the user asked for, parsed once at the edge (CLI, library, server). */
export type SpecBody = { kind: 'fp32' } | { kind: 'fp16' } | ({ kind: 'kivi' } & KiviOptions) | ({ kind: 'fake' } & FakeOptions);

/** A parsed spec with the name outputs show: the string the user gave, or the canonical form. */
export type CacheSpec = SpecBody & { readonly name: string };

export const NAMED_SPECS = [
  'fp32',
  'fp16',
  'kivi2',
  'kivi4',
  'kivi2-hq',
  'kivi2-r32',
  'kivi2-g128',
  'fake4-kT-vT',
  'fake2-kC-vT',
  'fake2-kT-vC',
  'fake2-kC-vC',
  'fake2-kT-vT',
] as const;

const VALID_FORMS =
  `valid forms: ${NAMED_SPECS.join(', ')}; kivi<b>[-r<R>][-g<G>] (b = 2, 4, 8); fake<b>-k<T|C>-v<T|C>; ` +
  'kivi:k=2,v=4,g=32,r=128[,residual=fp32][,gk=G][,gv=G][,rot=hadamard][,sink=S][,vmeta=8]; fake:bits=2,k=channel,v=token,g=32';

/** The cache every face uses unless told otherwise: KIVI is the product. */
export const DEFAULT_KV = 'kivi2';

function bad(spec: string, why: string): never {
  throw new KiviError(`bad --kv spec "${spec}": ${why}; ${VALID_FORMS}`);
}

function bitsOf(spec: string, s: string | undefined): Bits {
  const b = Number(s);
  if (!isBits(b)) bad(spec, `bits must be 2, 4 or 8, got "${s}"`);
  return b;
}

function intOf(spec: string, key: string, s: string | undefined): number {
  const n = Number(s);
  if (s === undefined || !/^\d+$/.test(s) || n <= 0) bad(spec, `${key} must be a positive integer, got "${s}"`);
  return n;
}

/**
 * KIVI keeps its full-precision residual in float16 unless told otherwise: the paper's setting (the model
 * computes in fp16, so its residual is fp16). `residual=fp32` is the reference's exact arithmetic.
 */
function kivi(kBits: Bits, vBits: Bits, groupSize = 32, residual = 128, residualDtype: 'fp32' | 'fp16' = 'fp16'): SpecBody {
  return { kind: 'kivi', kBits, vBits, groupSize, residual, residualDtype };
}

/**
 * `kivi2-hq` (issue 14): the best configuration measured at ≤ 3.5 bits per element that every back end runs
 * (docs/results/hq/): 4-bit keys rotated by a Walsh–Hadamard transform, per channel in groups of 64 tokens;
 * 2-bit values per token in groups of 64 channels; R = 128. (4 + 32/64 + 2 + 32/64) / 2 = 3.5 bits per
 * element. (Until the rotation ran on wasm and WebGPU it was `kivi:k=4,v=2,gk=128,gv=32,vmeta=8,rot=hadamard`,
 * also 3.5 bits, whose 8-bit value metadata only the TypeScript reference reads.)
 */
export const KIVI2_HQ = 'kivi:k=4,v=2,g=64,rot=hadamard';

/** The options beyond the paper (issue 14): group sizes apart, key rotation, sink tokens, 8-bit value metadata. */
function kiviExtras(spec: string, kv: Map<string, string>): Partial<KiviOptions> {
  const out: Partial<KiviOptions> = {};
  if (kv.has('gk')) out.keyGroupSize = intOf(spec, 'gk', kv.get('gk'));
  if (kv.has('gv')) out.valueGroupSize = intOf(spec, 'gv', kv.get('gv'));
  const rot = kv.get('rot');
  if (rot !== undefined) {
    if (rot !== 'hadamard' && rot !== 'none') bad(spec, `rot must be hadamard or none, got "${rot}"`);
    if (rot === 'hadamard') out.keyRotation = 'hadamard';
  }
  const sink = kv.get('sink');
  if (sink !== undefined) {
    if (!/^\d+$/.test(sink)) bad(spec, `sink must be a whole number of tokens, got "${sink}"`);
    if (Number(sink) > 0) out.sink = Number(sink);
  }
  const vmeta = kv.get('vmeta');
  if (vmeta !== undefined) {
    if (vmeta !== '16' && vmeta !== '8') bad(spec, `vmeta must be 16 or 8, got "${vmeta}"`);
    if (vmeta === '8') out.valueMetaBits = 8;
  }
  return out;
}

function parseKeyValues(spec: string, body: string, allowed: string[]): Map<string, string> {
  const m = new Map<string, string>();
  for (const part of body.split(',')) {
    const [k, v, ...rest] = part.split('=');
    if (!k || v === undefined || rest.length > 0) bad(spec, `"${part}" is not key=value`);
    if (!allowed.includes(k)) bad(spec, `unknown key "${k}" (keys: ${allowed.join(', ')})`);
    if (m.has(k)) bad(spec, `key "${k}" given twice`);
    m.set(k, v);
  }
  return m;
}

function axisOf(spec: string, s: string | undefined): Axis {
  if (s === 'token' || s === 'T') return 'token';
  if (s === 'channel' || s === 'C') return 'channel';
  bad(spec, `axis must be token or channel, got "${s}"`);
}

/** Parse a cache spec string. */
export function parseKvSpec(spec: string): CacheSpec {
  const s = spec.trim();
  return { ...parseBody(spec, s === 'kivi2-hq' ? KIVI2_HQ : s), name: s };
}

function parseBody(spec: string, s: string): SpecBody {
  if (s === 'fp32') return { kind: 'fp32' };
  if (s === 'fp16') return { kind: 'fp16' };
  let m = /^kivi(\d+)((?:-[rg]\d+)*)$/.exec(s);
  if (m) {
    const b = bitsOf(spec, m[1]);
    let R = 128;
    let G = 32;
    for (const [, key, val] of m[2]!.matchAll(/-([rg])(\d+)/g)) {
      if (key === 'r') R = intOf(spec, 'r', val);
      else G = intOf(spec, 'g', val);
    }
    return kivi(b, b, G, R);
  }
  m = /^fake(\d+)-k([TC])-v([TC])$/.exec(s);
  if (m) return { kind: 'fake', bits: bitsOf(spec, m[1]), keyAxis: axisOf(spec, m[2]), valueAxis: axisOf(spec, m[3]), groupSize: 32 };
  if (s.startsWith('kivi:')) {
    const kv = parseKeyValues(spec, s.slice(5), ['k', 'v', 'g', 'r', 'residual', 'gk', 'gv', 'rot', 'sink', 'vmeta']);
    const res = kv.get('residual') ?? 'fp16';
    if (res !== 'fp32' && res !== 'fp16') bad(spec, `residual must be fp32 or fp16, got "${res}"`);
    const base = kivi(
      bitsOf(spec, kv.get('k') ?? '2'),
      bitsOf(spec, kv.get('v') ?? '2'),
      kv.has('g') ? intOf(spec, 'g', kv.get('g')) : 32,
      kv.has('r') ? intOf(spec, 'r', kv.get('r')) : 128,
      res,
    );
    return { ...base, ...kiviExtras(spec, kv) };
  }
  if (s.startsWith('fake:')) {
    const kv = parseKeyValues(spec, s.slice(5), ['bits', 'k', 'v', 'g']);
    return {
      kind: 'fake',
      bits: bitsOf(spec, kv.get('bits') ?? '2'),
      keyAxis: axisOf(spec, kv.get('k') ?? 'channel'),
      valueAxis: axisOf(spec, kv.get('v') ?? 'token'),
      groupSize: kv.has('g') ? intOf(spec, 'g', kv.get('g')) : 32,
    };
  }
  bad(spec, 'not recognized');
}

/**
 * Split "fp32,kivi2,kivi:k=2,v=4,g=32" into specs: a key=value part continues the general form before it.
 * Every spec is validated.
 */
export function splitSpecList(list: string): string[] {
  const out: string[] = [];
  for (const part of list.split(',').map((p) => p.trim())) {
    if (part.includes('=') && !part.includes(':') && out.length > 0 && out[out.length - 1]!.includes(':')) {
      out[out.length - 1] += `,${part}`;
    } else {
      out.push(part);
    }
  }
  for (const s of out) parseKvSpec(s);
  return out;
}

/** What the library accepts: a spec string, or a spec object (its name is optional). */
export type KvOption = string | SpecBody | CacheSpec;

/** Accept a string or an object (library option); `fallback` when none is given (KIVI-2, the default). */
export function toCacheSpec(kv: KvOption | undefined, fallback = DEFAULT_KV): CacheSpec {
  if (kv === undefined) return parseKvSpec(fallback);
  if (typeof kv === 'string') return parseKvSpec(kv);
  if (typeof kv !== 'object' || kv === null) throw new KiviError(`a cache spec must be a string or an object, got ${typeof kv}`);
  const body = checkBody(kv);
  return { ...body, name: 'name' in kv && typeof kv.name === 'string' ? kv.name : formatKvSpec(body) };
}

/** Check an object given by a library caller field by field (it did not come through the parser). */
function checkBody(kv: SpecBody): SpecBody {
  const where = JSON.stringify(kv);
  switch (kv.kind) {
    case 'fp32':
    case 'fp16':
      return { kind: kv.kind };
    case 'kivi':
      if (!isBits(kv.kBits) || !isBits(kv.vBits)) bad(where, 'kBits and vBits must be 2, 4 or 8');
      if (kv.residualDtype !== 'fp32' && kv.residualDtype !== 'fp16') bad(where, 'residualDtype must be fp32 or fp16');
      return {
        kind: 'kivi',
        kBits: kv.kBits,
        vBits: kv.vBits,
        groupSize: kv.groupSize,
        residual: kv.residual,
        residualDtype: kv.residualDtype,
        // The options beyond the paper only when given (validateKivi checks their values).
        ...(kv.keyGroupSize !== undefined ? { keyGroupSize: kv.keyGroupSize } : {}),
        ...(kv.valueGroupSize !== undefined ? { valueGroupSize: kv.valueGroupSize } : {}),
        ...(kv.keyRotation !== undefined ? { keyRotation: kv.keyRotation } : {}),
        ...(kv.sink !== undefined && kv.sink !== 0 ? { sink: kv.sink } : {}),
        ...(kv.valueMetaBits !== undefined ? { valueMetaBits: kv.valueMetaBits } : {}),
      };
    case 'fake':
      if (!isBits(kv.bits)) bad(where, 'bits must be 2, 4 or 8');
      if (!['token', 'channel'].includes(kv.keyAxis) || !['token', 'channel'].includes(kv.valueAxis)) bad(where, 'axes must be token or channel');
      return { kind: 'fake', bits: kv.bits, keyAxis: kv.keyAxis, valueAxis: kv.valueAxis, groupSize: kv.groupSize };
    default:
      bad(where, `unknown kind ${JSON.stringify((kv as { kind?: unknown }).kind)}`);
  }
}

/** Canonical string of a spec (the general form for anything not named). */
export function formatKvSpec(spec: SpecBody): string {
  switch (spec.kind) {
    case 'fp32':
    case 'fp16':
      return spec.kind;
    case 'kivi':
      return (
        `kivi:k=${spec.kBits},v=${spec.vBits},g=${spec.groupSize},r=${spec.residual}` +
        (spec.residualDtype === 'fp32' ? ',residual=fp32' : '') +
        (spec.keyGroupSize !== undefined && spec.keyGroupSize !== spec.groupSize ? `,gk=${spec.keyGroupSize}` : '') +
        (spec.valueGroupSize !== undefined && spec.valueGroupSize !== spec.groupSize ? `,gv=${spec.valueGroupSize}` : '') +
        (spec.keyRotation === 'hadamard' ? ',rot=hadamard' : '') +
        (spec.sink ? `,sink=${spec.sink}` : '') +
        (spec.valueMetaBits === 8 ? ',vmeta=8' : '')
      );
    case 'fake':
      return `fake:bits=${spec.bits},k=${spec.keyAxis},v=${spec.valueAxis},g=${spec.groupSize}`;
  }
}

/** Check a spec against a model's shapes (clear errors before any work starts). */
export function validateSpec(spec: SpecBody, dims: CacheDims): void {
  if (spec.kind === 'kivi') validateKivi(spec, dims.headDim);
  if (spec.kind === 'fake') {
    const G = spec.groupSize;
    if (!Number.isInteger(G) || G <= 0) throw new KiviError(`fake-quant group size must be a positive integer, got ${G}`);
    if ((spec.keyAxis === 'token' || spec.valueAxis === 'token') && dims.headDim % G !== 0) {
      throw new KiviError(`fake-quant group size G=${G} must divide head_dim ${dims.headDim}`);
    }
  }
}

/** Refuse, before any work, a spec the pool's back end cannot run (fake caches on the GPU, oracle-only KIVI options elsewhere). */
export function checkSpecBackend(spec: CacheSpec, pool: PagePool): void {
  if (spec.kind === 'kivi') checkKiviBackend(spec, pool);
  if (spec.kind === 'fake' && pool.fakeJobs === false) {
    throw new KiviError(`${spec.name}: simulated-quantization (fake) caches run on the CPU back ends only (--backend ts or wasm), not on webgpu`);
  }
}

/** A fresh, empty cache for one sequence, its pages from `pool` (the spec checked against the pool's shape). */
export function createCache(spec: CacheSpec, pool: PagePool): KvCache {
  switch (spec.kind) {
    case 'fp32':
    case 'fp16':
      return new DenseCache(spec, pool);
    case 'kivi':
      return new KiviCache(spec, pool);
    case 'fake':
      checkSpecBackend(spec, pool);
      return new FakeQuantCache(spec, pool);
  }
}
