/**
 * The KIVI cache (docs/KIVI.md §5–6): keys quantized per channel in groups of G tokens, values per token
 * in groups of G channels, the newest tokens kept in full precision. Pages, each for every layer and kv
 * head of its tokens:
 *  - key blocks of exactly R tokens (one flush of the key residual; kernels/layout.ts SEG_KIVI_K);
 *  - the key residual: up to R − 1 full-precision tokens between steps, in pages of gcd(R, 32) slots;
 *  - value pages of VALUE_PAGE quantized tokens (SEG_KIVI_V);
 *  - the value residual: the newest R tokens in full precision, in pages of gcd(R, 32) slots, dropped from
 *    the front as their tokens are quantized.
 * A step's new tokens attend to [key blocks ; key residual ; themselves] and [value pages ; value residual ;
 * themselves], all on the stored codes; then they are folded in: a key residual that reaches R tokens is
 * quantized as one block (from its pages and the new rows), the values that leave the window of the
 * newest R are quantized one token each (from their pages, or straight from the new rows), and the rest
 * is stored in full precision.
 *
 * Options beyond the paper (issue 14; docs/results/hq/METHOD.md):
 *  - gk=, gv=: key and value group sizes apart (every back end: the segments carry G);
 *  - rot=hadamard: a pre-phase job rotates each new token's query and key heads in place by the orthonormal
 *    Walsh–Hadamard transform (src/quant/hadamard.ts) before attention and storage, so every stored key is
 *    rotated, q·k is unchanged, and outlier channels are spread before per-channel quantization (every back
 *    end runs JOB_ROTATE);
 *  - sink=S: the first S tokens' keys and values stay in full precision (the residual's dtype), outside the
 *    quantized groups (attention sinks: the tokens every head leans on). The quantized stream starts at
 *    token S, so its groups, blocks and residual rules are KIVI's, shifted by S. In a task the sink's rows
 *    come after the residuals and before the step's own rows, for keys and values alike (their orders must
 *    agree token by token; softmax does not care which comes first), so every back end runs it unchanged;
 *  - vmeta=8: value pages with 8-bit scale/minimum codes on a float16 per-token grid (SEG_KIVI_V8), records
 *    only the TypeScript reference runs (PagePool.oracleJobs); spec.ts refuses them on other back ends.
 */

import { JOB_KEYS, JOB_QKEY, JOB_QVAL, JOB_ROTATE, JOB_VALUES, SEG_F16, SEG_F32, SEG_KIVI_K, SEG_KIVI_V, SEG_KIVI_V8, SEG_ROWS } from '../kernels/layout.js';
import { sectionBytes } from '../kernels/pages.js';
import { PageList, type StepPlan } from '../kernels/plan.js';
import type { PagePool } from '../kernels/types.js';
import { checkHadamardDim } from '../quant/hadamard.js';
import { type Bits, packedWords } from '../quant/quantizer.js';
import { KiviError } from '../util/errors.js';
import { checkLength } from './dense.js';
import { PagedRows } from './paged.js';
import type { CacheSpec } from './spec.js';
import { type CacheImage, ImageReader, type KvCache } from './types.js';

export interface KiviOptions {
  kBits: Bits;
  vBits: Bits;
  /** Group size G: tokens per key group, channels per value group. */
  groupSize: number;
  /** Full-precision residual length R (R % G == 0). */
  residual: number;
  /** Residual storage: float32 (the reference's) or float16 (the paper's, smaller). */
  residualDtype: 'fp32' | 'fp16';
  /** Key group size (tokens) and value group size (channels) apart; default groupSize. */
  keyGroupSize?: number;
  valueGroupSize?: number;
  /** Walsh–Hadamard rotation of keys and queries per head. */
  keyRotation?: 'hadamard';
  /** Tokens at the start kept in full precision, outside the quantized groups (0: none). */
  sink?: number;
  /** Value scale/minimum bits: 16 (float16, KIVI's) or 8 (codes on a float16 per-token grid; TypeScript reference only). */
  valueMetaBits?: 16 | 8;
}

export const keyGroup = (o: KiviOptions): number => o.keyGroupSize ?? o.groupSize;
export const valueGroup = (o: KiviOptions): number => o.valueGroupSize ?? o.groupSize;
export const valueMeta8 = (o: KiviOptions): boolean => o.valueMetaBits === 8;
export const sinkTokens = (o: KiviOptions): number => o.sink ?? 0;
/** Most sink tokens a spec may ask for (a sink is for the first few tokens; past this it is an fp16 cache). */
export const MAX_SINK = 4096;
/** Full-precision slots per sink page. */
const sinkPage = (S: number): number => Math.min(S, 64);
/** The options whose records only the TypeScript reference runs, by their spec keys. */
export function oracleOnlyOptions(o: KiviOptions): string[] {
  return valueMeta8(o) ? ['vmeta=8'] : [];
}

/** Quantized value tokens per page. */
export const VALUE_PAGE = 64;

/**
 * Full-precision slots per residual page: divides R, so key blocks start on a page boundary. Small,
 * because the value residual is a window sliding over its pages: R tokens span up to R/P + 1 pages, so
 * a page of P slots leaves up to P slots idle per layer and kv head (Llama-2-7B shapes, `kivi:k=2,v=2,
 * g=32,r=32` at 498 tokens: 62.5 MiB of pages with 8 slots, 70.5 MiB with 32); more pages cost a little
 * bookkeeping per step and more page records for attention.
 */
export function residualPage(R: number): number {
  let a = R,
    b = 8;
  while (b) [a, b] = [b, a % b];
  return a;
}

/** Refuse options whose records this pool's back end does not run (one line naming the one that does). */
export function checkKiviBackend(spec: KiviOptions & { name: string }, pool: Pick<PagePool, 'oracleJobs'>): void {
  const oracle = oracleOnlyOptions(spec);
  if (oracle.length > 0 && pool.oracleJobs !== true) {
    throw new KiviError(`${spec.name}: ${oracle.join(' and ')} ${oracle.length > 1 ? 'run' : 'runs'} on the TypeScript reference back end only (--backend ts)`);
  }
}

/** Check options against a model's head size; a clear error for anything the layout cannot hold. */
export function validateKivi(o: KiviOptions, headDim: number): void {
  const R = o.residual;
  const Gk = keyGroup(o);
  const Gv = valueGroup(o);
  for (const G of [o.groupSize, Gk, Gv]) {
    if (!Number.isInteger(G) || G <= 0) throw new KiviError(`KIVI group size must be a positive integer, got ${G}`);
  }
  if (!Number.isInteger(R) || R <= 0) throw new KiviError(`KIVI residual length must be a positive integer, got ${R}`);
  if (R % Gk !== 0) throw new KiviError(`KIVI residual length R=${R} must be a multiple of the group size G=${Gk} (of keys)`);
  if (headDim % Gv !== 0) {
    throw new KiviError(`KIVI group size G=${Gv} must divide the model's head_dim ${headDim} (choose another --kv: a G that divides it, or fp16)`);
  }
  for (const [b, G] of [
    [o.kBits, Gk],
    [o.vBits, Gv],
  ] as const) {
    if (G % (32 / b) !== 0) throw new KiviError(`KIVI group size G=${G} must be a multiple of ${32 / b} (codes per 32-bit word at ${b} bits)`);
  }
  if (o.keyRotation !== undefined && o.keyRotation !== 'hadamard') throw new KiviError(`KIVI key rotation must be hadamard, got ${String(o.keyRotation)}`);
  if (o.keyRotation === 'hadamard') checkHadamardDim(headDim);
  if (o.sink !== undefined && (!Number.isInteger(o.sink) || o.sink < 0 || o.sink > MAX_SINK)) {
    throw new KiviError(`KIVI sink must be a whole number of tokens from 0 to ${MAX_SINK}, got ${String(o.sink)}`);
  }
  if (o.valueMetaBits !== undefined && o.valueMetaBits !== 16 && o.valueMetaBits !== 8) {
    throw new KiviError(`KIVI value metadata bits must be 16 or 8, got ${String(o.valueMetaBits)}`);
  }
}

export class KiviCache implements KvCache {
  private readonly R: number;
  /** Sink tokens asked for (S); the quantized stream's token t is the sequence's token S + t. */
  private readonly S: number;
  private readonly Gk: number;
  private readonly Gv: number;
  private readonly valueKind: number;
  private readonly rotate: boolean;
  private readonly kBits: Bits;
  private readonly vBits: Bits;
  private readonly keySection: number;
  private readonly valueSection: number;
  private readonly perToken: { key: number; value: number; residual: number };

  /** Key blocks of R tokens each, oldest first (appended only, until free()). */
  private readonly keyList = new PageList();
  private readonly keyBlocks = this.keyList.pages;
  private readonly keyResidual: PagedRows;
  /** Value pages of VALUE_PAGE quantized tokens; tokens [0, valueQuantized) are quantized (appended only, until free()). */
  private readonly valueList = new PageList();
  private readonly valuePages = this.valueList.pages;
  private valueQuantized = 0;
  private readonly valueResidual: PagedRows;
  /** The first S tokens' keys and values in full precision (never dropped until free()). */
  private readonly sinkKeys: PagedRows | null;
  private readonly sinkValues: PagedRows | null;

  constructor(
    readonly spec: CacheSpec & { kind: 'kivi' },
    readonly pool: PagePool,
  ) {
    const d = pool.shape.headDim;
    validateKivi(spec, d);
    checkKiviBackend(spec, pool);
    this.R = spec.residual;
    this.Gk = keyGroup(spec);
    this.Gv = valueGroup(spec);
    this.kBits = spec.kBits;
    this.vBits = spec.vBits;
    this.valueKind = valueMeta8(spec) ? SEG_KIVI_V8 : SEG_KIVI_V;
    this.rotate = spec.keyRotation === 'hadamard';
    this.keySection = sectionBytes(SEG_KIVI_K, this.R, d, this.kBits, this.Gk);
    this.valueSection = sectionBytes(this.valueKind, VALUE_PAGE, d, this.vBits, this.Gv);
    const resKind = spec.residualDtype === 'fp16' ? SEG_F16 : SEG_F32;
    const P = residualPage(this.R);
    this.keyResidual = new PagedRows(pool, resKind, P, d);
    this.valueResidual = new PagedRows(pool, resKind, P, d);
    this.S = sinkTokens(spec);
    this.sinkKeys = this.S > 0 ? new PagedRows(pool, resKind, sinkPage(this.S), d) : null;
    this.sinkValues = this.S > 0 ? new PagedRows(pool, resKind, sinkPage(this.S), d) : null;
    // Content bytes per token and per (layer, kv head), for bytes(); vmeta=8: (u, v) per group, (lo, hi) per token.
    this.perToken = {
      key: packedWords(d, this.kBits) * 4 + (d / this.Gk) * 4,
      value: packedWords(d, this.vBits) * 4 + (valueMeta8(spec) ? (d / this.Gv) * 2 + 4 : (d / this.Gv) * 4),
      residual: d * (spec.residualDtype === 'fp16' ? 2 : 4),
    };
  }

  /** Sink tokens held. */
  private get sinkCount(): number {
    return this.sinkKeys?.count ?? 0;
  }

  get length(): number {
    return this.sinkCount + this.keyBlocks.length * this.R + this.keyResidual.count;
  }

  plan(plan: StepPlan, row: number, n: number): void {
    const T0 = this.length;
    const { R, Gk, Gv, kBits, vBits, sinkKeys, sinkValues } = this;
    if (this.rotate) {
      // Before the attention reads them: the new rows' queries and keys, rotated in place.
      plan.job('pre', JOB_ROTATE, JOB_KEYS);
      plan.dst(SEG_ROWS, row, 0, n, 0, 0);
    }
    // A plan without tasks (filling) skips the per-token page lists: O(n × pages) otherwise.
    for (let i = 0; plan.takesTasks && i < n; i++) {
      plan.task(row + i, T0 + i + 1);
      if (plan.pageRuns) plan.keyRun(SEG_KIVI_K, this.keyList, 0, this.keyBlocks.length * R, R, this.keySection, kBits, Gk);
      else for (const b of this.keyBlocks) plan.key(SEG_KIVI_K, b, 0, R, R, this.keySection, kBits, Gk);
      this.keyResidual.segments(plan, false);
      sinkKeys?.segments(plan, false);
      plan.keyRows(row, i + 1);
      if (plan.pageRuns) plan.valueRun(this.valueKind, this.valueList, 0, this.valueQuantized, VALUE_PAGE, this.valueSection, vBits, Gv);
      for (let t = 0; !plan.pageRuns && t < this.valueQuantized; t += VALUE_PAGE) {
        plan.value(
          this.valueKind,
          this.valuePages[t / VALUE_PAGE]!,
          0,
          Math.min(VALUE_PAGE, this.valueQuantized - t),
          VALUE_PAGE,
          this.valueSection,
          vBits,
          Gv,
        );
      }
      this.valueResidual.segments(plan, true);
      sinkValues?.segments(plan, true);
      plan.valueRows(row, i + 1);
    }
    // The first S tokens go to the sink; the rest fold into the quantized stream (its own token count).
    const toSink = Math.min(n, this.S - this.sinkCount);
    if (toSink > 0) {
      sinkKeys!.store(plan, JOB_KEYS, row, toSink);
      sinkValues!.store(plan, JOB_VALUES, row, toSink);
    }
    if (n > toSink) {
      this.foldKeys(plan, row + toSink, n - toSink);
      this.foldValues(plan, row + toSink, n - toSink, T0 + toSink - this.S);
    }
  }

  /** docs/KIVI.md §5.3: the key residual is quantized as one block each time it reaches R tokens. */
  private foldKeys(plan: StepPlan, row: number, n: number): void {
    const res = this.keyResidual;
    for (let k = 0; k < n; ) {
      const need = this.R - res.count;
      if (n - k < need) {
        res.store(plan, JOB_KEYS, row + k, n - k);
        return;
      }
      const block = this.pool.alloc(this.keySection);
      plan.job('post', JOB_QKEY, JOB_KEYS);
      res.sources(plan, res.start, res.end);
      plan.src(SEG_ROWS, row + k, 0, need);
      plan.dst(SEG_KIVI_K, block, 0, this.R, this.R, this.keySection, this.kBits, this.Gk);
      this.keyBlocks.push(block);
      k += need;
      res.clearAt(plan, this.keyBlocks.length * this.R);
    }
  }

  /** docs/KIVI.md §5.4: values outside the window of the newest R tokens are quantized, oldest first (T0: the stream's tokens before the step). */
  private foldValues(plan: StepPlan, row: number, n: number, T0: number): void {
    const T1 = T0 + n;
    const res = this.valueResidual;
    const target = Math.max(this.valueQuantized, T1 - this.R);
    for (let t = this.valueQuantized; t < target; ) {
      const pi = Math.floor(t / VALUE_PAGE);
      if (pi === this.valuePages.length) this.valuePages.push(this.pool.alloc(this.valueSection));
      const slot = t - pi * VALUE_PAGE;
      const end = Math.min(target, (pi + 1) * VALUE_PAGE);
      plan.job('post', JOB_QVAL, JOB_VALUES);
      if (t < T0) res.sources(plan, t, Math.min(end, T0));
      if (end > T0) plan.src(SEG_ROWS, row + Math.max(t, T0) - T0, 0, end - Math.max(t, T0));
      plan.dst(this.valueKind, this.valuePages[pi]!, slot, end - t, VALUE_PAGE, this.valueSection, this.vBits, this.Gv);
      t = end;
    }
    this.valueQuantized = target;
    const first = Math.max(T0, target);
    if (target >= res.end) res.clearAt(plan, first);
    else res.dropBefore(plan, target);
    res.store(plan, JOB_VALUES, row + first - T0, T1 - first);
  }

  bytes(): number {
    const { numLayers: L, numKvHeads: KV } = this.pool.shape;
    const p = this.perToken;
    const kq = this.keyBlocks.length * this.R;
    const full = this.keyResidual.count + this.valueResidual.count + 2 * this.sinkCount;
    return L * KV * (kq * p.key + this.valueQuantized * p.value + full * p.residual);
  }

  allocatedBytes(): number {
    return (
      this.keyBlocks.length * this.pool.pageBytes(this.keySection) +
      this.valuePages.length * this.pool.pageBytes(this.valueSection) +
      this.keyResidual.allocatedBytes() +
      this.valueResidual.allocatedBytes() +
      (this.sinkKeys?.allocatedBytes() ?? 0) +
      (this.sinkValues?.allocatedBytes() ?? 0)
    );
  }

  free(): void {
    for (const p of this.keyBlocks) this.pool.free(p);
    for (const p of this.valuePages) this.pool.free(p);
    this.keyBlocks.length = 0;
    this.valuePages.length = 0;
    this.keyList.reset();
    this.valueList.reset();
    this.valueQuantized = 0;
    this.keyResidual.clearAt(null, 0);
    this.valueResidual.clearAt(null, 0);
    this.sinkKeys?.clearAt(null, 0);
    this.sinkValues?.clearAt(null, 0);
  }

  async save(): Promise<CacheImage> {
    const img: CacheImage = { length: this.length, state: [this.keyBlocks.length, this.valuePages.length, this.valueQuantized], pages: [] };
    for (const p of this.keyBlocks) img.pages.push({ section: this.keySection, bytes: await this.pool.readPage(p, this.keySection) });
    for (const p of this.valuePages) img.pages.push({ section: this.valueSection, bytes: await this.pool.readPage(p, this.valueSection) });
    await this.keyResidual.save(img);
    await this.valueResidual.save(img);
    await this.sinkKeys?.save(img);
    await this.sinkValues?.save(img);
    return img;
  }

  restore(image: CacheImage): void {
    if (this.length !== 0) throw new Error('restore into a non-empty cache');
    const r = new ImageReader(image);
    const [blocks, pages, vq] = [r.num(), r.num(), r.num()];
    if (vq > pages * VALUE_PAGE || vq <= (pages - 1) * VALUE_PAGE) throw new KiviError('corrupt cache image: value pages and count disagree');
    const take = (section: number) => {
      const p = this.pool.alloc(section);
      this.pool.writePage(p, section, r.page(section).bytes);
      return p;
    };
    for (let i = 0; i < blocks; i++) this.keyBlocks.push(take(this.keySection));
    for (let i = 0; i < pages; i++) this.valuePages.push(take(this.valueSection));
    this.valueQuantized = vq;
    this.keyResidual.restore(r);
    this.valueResidual.restore(r);
    this.sinkKeys?.restore(r);
    this.sinkValues?.restore(r);
    r.done();
    // The residuals sit where the quantized parts end; the sink is full before the stream starts.
    const stream = this.length - this.sinkCount;
    if (this.keyResidual.start !== blocks * this.R || this.valueResidual.start !== vq || this.valueResidual.end !== stream) {
      throw new KiviError('corrupt cache image: residuals do not follow the quantized tokens');
    }
    const sk = this.sinkKeys,
      sv = this.sinkValues;
    if (sk && sv && (sk.start !== 0 || sv.start !== 0 || sv.end !== sk.end || (stream > 0 && sk.count !== this.S) || sk.count > this.S)) {
      throw new KiviError('corrupt cache image: sink tokens do not match the spec');
    }
    checkLength(this, image);
  }

  /** Counts for tests and analysis: quantized and full-precision tokens of keys and values. */
  layout(): { sink: number; keyQuantized: number; keyResidual: number; valueQuantized: number; valueResidual: number } {
    return {
      sink: this.sinkCount,
      keyQuantized: this.keyBlocks.length * this.R,
      keyResidual: this.keyResidual.count,
      valueQuantized: this.valueQuantized,
      valueResidual: this.valueResidual.count,
    };
  }
}
