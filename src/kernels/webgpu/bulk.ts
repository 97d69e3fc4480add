/**
 * WGSL of decode attention over the bulk of a KIVI cache: the tokens whose keys and values both lie in
 * quantized pages (2 or 4 bits, one width for both), in blocks of 32 tokens. Everything else of a task
 * (the residual, sink rows, the step's own rows, other specs) goes to the general kernel (attention.ts);
 * both write partials that `merge` combines.
 *
 * Why a kernel of its own: in the general kernel a thread owns a token, so every one of a key row's codes
 * is multiplied into query values read from workgroup memory (one load per four multiply-adds a head),
 * and each key group's folded query passes through workgroup memory behind two barriers. Here a thread
 * owns CW channels of a block of 32 tokens, for keys and for values alike:
 *  - keys: it folds its channels of the query with the block's key scales in registers (the block lies
 *    in one key group), then scores the block's tokens on its channels, every query head's multiply-add
 *    for each code read, no workgroup memory in the loop; the NCH partial scores of a token are summed
 *    through workgroup memory, SB tokens at a time (two barriers per SB tokens);
 *  - integer keys (IK, the default where WGSL has packed 8-bit dot products): the thread's folded query
 *    q ⊙ s is quantized to int16 with its own step α = max |q ⊙ s| / 32767 (round half to even), each value
 *    split into a signed high byte and an unsigned low byte; a code word's codes are masked into byte
 *    lanes (one shift and one mask per four codes, for every head), and each head takes two dot products
 *    (dot4I8Packed, dot4U8Packed: DP4A on NVIDIA) per four codes instead of four unpacks and four
 *    multiply-adds; partial = α·(256·Σhigh + Σlow) + Σ q·m, the sums exact integers. The rounding moves a
 *    thread's partial score by at most α/2·Σ code over its channels (the wasm kernels round the query the
 *    same way, kivi.ts; on the H200 scripts/gpu/attn-check.mjs finds the outputs within 4e-5 of the largest);
 *  - softmax: a lane's threads keep one running maximum per query head for the blocks that lane owns, so
 *    the maximum needs no workgroup-wide tree (each thread reads its block's scores for it), and one
 *    thread of the lane turns each token's score into its weight exp(s − M);
 *  - values: the same CW channels of the same tokens, U tokens' code words, scales and minimums loaded
 *    before their arithmetic, the weights from workgroup memory (one vec4 a token for 4 query heads).
 * Where it runs by default, and what the H200 measured of its builds: bulkDefault, docs/perf/webgpu-h200.md.
 * At the end the lanes' outputs are combined with their maxima (as the merge combines partials).
 *
 * Page layout (pool.ts, cache/kivi.ts): a key block of cap tokens holds rows of WPR words, then the
 * groups' scales and minimums (D halves each, cap / kG groups); a value page of cap tokens holds rows,
 * then each token's scales and minimums (D / vG halves). A block of 32 tokens lies within one key page
 * and one value page because both caps are multiples of 32 and blocks start at multiples of 32.
 */

import { KiviError } from '../../util/errors.js';
import type { AttnShape } from '../types.js';
import { arenaDirect, arenaSwitch, arenaWords, LDW, unswitched } from './arenas.js';
import { magic, writeOutput } from './attention.js';
import { attnBindings, ITEM_PROLOGUE, SEG_READERS } from './records.js';
import { f32lit } from './wgsl.js';

/** Threads per bulk workgroup. */
export const BULK_WG = 128;
/** Tokens per block: the unit of a lane's work, of page lookups and of key groups. */
export const BLOCK = 32;

export interface BulkGeometry {
  /** Code width of keys and values. */
  bits: number;
  /** Channels a thread owns. */
  cw: number;
  /** Threads a token row is split over (D / cw). */
  nch: number;
  /** Lanes (blocks in flight) of a workgroup: BULK_WG / nch. */
  lanes: number;
  /** Tokens whose partial scores are summed per round trip through workgroup memory. */
  sb: number;
  /** Query heads per kv head. */
  nq: number;
  /** Per-head values in workgroup memory as vec4s of 4 heads (nq a multiple of 4), else one f32 a head. */
  vec: boolean;
}

/**
 * When the bulk kernel runs, and how it is built, as KIVI_WEBGPU_BULK asks (parsed once by
 * parseBulkSetting); resolveBulk makes the choices left open (null, 0) for a shape and device: `on`, channels
 * a thread `cw` (and `vcw` for the split build's values kernel), tokens a round `sb`, the shortest quantized
 * prefix a task hands it (`min` tokens; by default the shape's, one block when forced on), two kernels
 * (`split`), subgroup shuffles (`sg`); value tokens in flight a thread (`u`), weights exponentiated once a
 * token (`ex`), integer key scores (`ik`), parts left out (`skip`, diagnostic).
 */
export interface BulkSetting {
  on: boolean | null;
  cw: number;
  vcw: number;
  sb: number;
  min: number;
  /** The longest task's bulk tokens from which a step takes the defaults' build for long steps (0: theirs). */
  longMin: number;
  /** Bulk items a step's attention is cut into (0: the shape's default). */
  items: number;
  split: boolean | null;
  sg: boolean | null;
  skip: ReadonlySet<string>;
  u: number;
  ex: boolean;
  aw: boolean;
  vx: boolean;
  ik: boolean;
}

/** A bulk setting resolved for one shape and device: every choice made. */
export interface BulkBuild extends BulkOptions {
  on: boolean;
  cw: number;
  /** Channels a thread of the split build's values kernel owns. */
  vcw: number;
  sb: number;
  min: number;
  /** Bulk items a step's attention is cut into (as many as whole passes of the lanes allow; 0: as the general kernel's). */
  items: number;
  /**
   * The build a step's bulk items take instead where one of its tasks hands the bulk kernel at least
   * `long.min` tokens (null: this build at every length).
   */
  long: BulkBuild | null;
}

/**
 * A setting from its text: '' (the defaults), '0' (off: the general kernel takes every token), 'on', or a
 * comma list of cwN, sbN, minN, uN, ex, noex, aw, av and -part (which imply on), and ik or fk (the key path's
 * arithmetic, which do not; by default integer where the device has WGSL's packed dot products, `dot4`),
 * and longN (where the defaults' build for long steps starts) and itemsN (the bulk items a step is cut
 * into), which do not either. One line naming a bad part.
 */
export function parseBulkSetting(text: string, dot4 = true, subgroups = true): BulkSetting {
  const o: BulkSetting = {
    on: null,
    cw: 0,
    vcw: 0,
    sb: 0,
    min: 0,
    longMin: 0,
    items: 0,
    skip: new Set(),
    ex: BULK_DEFAULTS.ex,
    aw: BULK_DEFAULTS.aw,
    vx: BULK_DEFAULTS.vx,
    u: BULK_DEFAULTS.u,
    ik: dot4,
    split: null,
    sg: null,
  };
  const skip = new Set<string>();
  for (const part of text.split(',').filter(Boolean)) {
    if (part === '0') {
      o.on = false;
      continue;
    }
    if (part === 'sg' || part === 'wg') {
      if (part === 'sg' && !subgroups) throw new KiviError('KIVI_WEBGPU_BULK: sg needs WebGPU subgroups, which this device lacks');
      o.sg = part === 'sg';
      continue;
    }
    if (part === 'ik' || part === 'fk') {
      if (part === 'ik' && !dot4) throw new KiviError('KIVI_WEBGPU_BULK: ik needs WGSL packed_4x8_integer_dot_product, which this WebGPU lacks');
      o.ik = part === 'ik';
      continue;
    }
    const lm = /^(long|items)(\d+)$/.exec(part);
    if (lm && Number(lm[2]) >= 1 && Number(lm[2]) <= 1 << 20) {
      if (lm[1] === 'long') o.longMin = Number(lm[2]);
      else o.items = Number(lm[2]);
      continue;
    }
    o.on ??= true;
    const m = /^(cw|vcw|sb|min|u)(\d+)$/.exec(part);
    const n = Number(m?.[2]);
    if (part === 'on') continue;
    if (part === 'ex' || part === 'noex') o.ex = part === 'ex';
    else if (part === 'aw' || part === 'av') o.aw = part === 'aw';
    else if (part === 'vx' || part === 'vm') o.vx = part === 'vx';
    else if (part === 'split' || part === 'fused') o.split = part === 'split';
    else if (part.startsWith('-') && (BULK_PARTS as readonly string[]).includes(part.slice(1))) skip.add(part.slice(1));
    else if (m?.[1] === 'cw' && [4, 8, 16, 32].includes(n)) o.cw = n;
    else if (m?.[1] === 'vcw' && [4, 8, 16, 32].includes(n)) o.vcw = n;
    else if (m?.[1] === 'sb' && [1, 2, 4, 8, 16, 32].includes(n)) o.sb = n;
    else if (m?.[1] === 'u' && [1, 2, 4, 8, 16].includes(n)) o.u = n;
    else if (m?.[1] === 'min' && n >= 1) o.min = n;
    else
      throw new KiviError(
        `KIVI_WEBGPU_BULK: unknown part "${part}" (0, on, cwN or vcwN of 4-32, sbN of 1-32, minN, longN, itemsN, uN of 1-16, ex, noex, aw, av, vx, vm, split, fused, ik, fk, sg, wg, -${BULK_PARTS.join(', -')})`,
      );
  }
  o.skip = skip;
  return o;
}

/**
 * The shortest quantized prefix (tokens a sequence and kv head) the bulk kernel takes by default. On the
 * H200 at 32 kv heads, with integer key scores, the step's attention took 270–288 µs with it at 64K tokens
 * against 319 without, 514–519 against 679 at 128K, but 123–139 against 118–125 at 16K; at short contexts
 * its extra dispatch is pure cost (Llama-2-7B, one sequence at 160–224 tokens: kivi2 decoded 104 tokens/s
 * with it, 122 without). Between 16K and 64K (with float key scores it gained nothing below 256K).
 */
export const BULK_MIN_DEFAULT = 49152;

/**
 * The shortest quantized prefix the split, subgroup build takes by default at 4 query heads a kv head. On
 * the H200 it ran 1.10–1.12× fp16's speed at 1M tokens where the general kernel ran 1.01×, 1.33× against
 * 1.02× at 2M and 1.50× against 1.08× at 4M, but 0.93–0.95× against 1.04–1.07× at 512K and 0.83–0.91×
 * against 1.19–1.26× at 64K: between the 512K where it lost and the 1M where it won.
 */
export const BULK_MIN_GQA = 786432;

/**
 * The longest task's bulk tokens from which a step at one query head a kv head takes the split, subgroup
 * build instead of the fused one. On the H200 at 32 kv heads (one step's kivi2 attention replayed, builds
 * in turns, twice each): fused 1374–1383 µs against split `sg` 1484–1496 at 512K tokens, 3065–3089 against
 * 2864–2868 at 1M, 6498–6519 against 5937–6024 at 2M (docs/perf/webgpu-h200.md, fourteenth session): between
 * the 512K where it lost and the 1M where it won, as at 4 query heads (BULK_MIN_GQA).
 */
export const BULK_LONG_MHA = 786432;

/**
 * Bulk items a step is cut into by default at one query head a kv head. On the H200 at 32 kv heads (kivi2,
 * one step replayed, counts in turns, twice each): 2365–2380 µs with 2048 items (the general kernel's
 * count) at 1M tokens against 2165–2170 with 3168 (132 SMs × 24), 2177–2182 with 4224; at 2M 4774–4949
 * against 4446–4448 and 4341–4349; at 262K (the fused build) 652–661 against 631–643
 * (docs/perf/webgpu-h200.md, fifteenth session). A count tuned on one GPU: others may want their own.
 */
export const BULK_ITEMS_MHA = 3168;
/**
 * The same at more query heads a kv head: 0, the general kernel's count (planbuf.ts TARGET_ITEMS, 2048),
 * since on the H200 at four, 1M tokens, 528 to 2048 items measured within the noise (450–483 µs) and at 4M
 * 1056 items only 2.5% faster than 2048.
 */
export const BULK_ITEMS_GQA = 0;

type BulkChoice = Omit<BulkBuild, keyof BulkOptions | 'long'> & { split: boolean; sg: boolean };

/**
 * The bulk kernel's defaults for nq query heads a kv head, `sgFits` where the `sg` build fits the shape's
 * layout on the device (bulkSubgroups), from H200 sweeps (docs/perf/webgpu-h200.md): at 1 (MHA) the fused kernel, 16
 * channels a thread and rounds of 8 tokens, from BULK_MIN_DEFAULT (1.4–1.7× the general kernel's speed from
 * 64K tokens with integer key scores), and for steps with a task from BULK_LONG_MHA tokens the split build
 * with subgroup shuffles where the subgroups hold a lane; at 4 that split build with 8 channels a values
 * thread, from BULK_MIN_GQA, where the subgroups hold a lane; elsewhere the general kernel keeps every token
 * (at 4 the fused kernel's best build only matched it).
 */
export function bulkDefault(nq: number, sgFits = false): BulkChoice & { long: BulkChoice | null } {
  const cw = nq <= 4 ? 16 : 8;
  if (nq === 1) {
    // The long build keeps the fused one's channels a thread and rounds: a step's bulk items are laid out
    // for those (planbuf.ts BulkPolicy) before the step's longest task picks the build.
    const fused = { on: true, cw, vcw: cw, sb: 8, min: BULK_MIN_DEFAULT, items: BULK_ITEMS_MHA, split: false, sg: false };
    return { ...fused, long: sgFits ? { ...fused, min: BULK_LONG_MHA, split: true, sg: true } : null };
  }
  const gqa = nq === 4 && sgFits;
  return {
    on: gqa,
    cw,
    vcw: gqa ? 8 : cw,
    sb: 4,
    min: gqa ? BULK_MIN_GQA : BULK_MIN_DEFAULT,
    items: BULK_ITEMS_GQA,
    split: gqa,
    sg: gqa,
    long: null,
  };
}

/**
 * A setting resolved for a shape: what it leaves open, the shape's defaults (bulkDefault); forced on
 * (`on` or any layout part), the bulk kernel takes a task's quantized prefix from one block unless `min`
 * says otherwise. The defaults' build for long steps applies where the setting names neither `split`/`fused`
 * nor `sg`/`wg`.
 */
export function resolveBulk(o: BulkSetting, shape: AttnShape, subgroupMin: number, workgroupBytes: number): BulkBuild {
  const g = bulkGeometry(shape, 2, workgroupBytes, o.cw, o.sb);
  const d = bulkDefault(shape.numHeads / shape.numKvHeads, !!g && bulkSubgroups(g, subgroupMin));
  const build = (c: BulkChoice, min: number): BulkBuild => ({
    on: o.on ?? c.on,
    cw: o.cw || c.cw,
    vcw: o.vcw || o.cw || c.vcw,
    sb: o.sb || c.sb,
    min,
    items: o.items || c.items,
    split: o.split ?? c.split,
    sg: o.sg ?? c.sg,
    skip: o.skip,
    u: o.u,
    ex: o.ex,
    aw: o.aw,
    vx: o.vx,
    ik: o.ik,
    long: null,
  });
  const base = build(d, o.min || (o.on === null ? d.min : BLOCK));
  if (d.long && o.split === null && o.sg === null) base.long = build(d.long, o.longMin || d.long.min);
  return base;
}

/**
 * The bulk kernel's layout for a shape and code width, or null where it does not apply (the general
 * kernel then takes every token): channels a thread `cw` and tokens a round at most `sbMax` (0: the
 * shape's defaults).
 */
export function bulkGeometry(shape: AttnShape, bits: number, workgroupBytes: number, cw = 0, sbMax = 0): BulkGeometry | null {
  const { numHeads: H, numKvHeads: KV, headDim: D } = shape;
  if (bits !== 2 && bits !== 4) return null;
  const nq = H / KV;
  cw ||= bulkDefault(nq).cw;
  sbMax ||= bulkDefault(nq).sb;
  if (D % cw !== 0 || cw % 4 !== 0) return null;
  const nch = D / cw;
  if (nch > BULK_WG || BULK_WG % nch !== 0) return null;
  const lanes = BULK_WG / nch;
  // A round's partial scores in at most 32 registers (every query head of SB tokens); SB divides the block.
  let sb = BLOCK;
  while (sb > 1 && (sb * nq > 32 || sb > sbMax)) sb >>= 1;
  const g: BulkGeometry = { bits, cw, nch, lanes, sb, nq, vec: nq % 4 === 0 };
  return bulkBytes(g, D) <= workgroupBytes ? g : null;
}

/** Floats of `red`: a round's partials (a padded row of NCH + 1 entries a token, so the reducers' reads hit distinct banks), or the lanes' outputs. */
function redFloats(g: BulkGeometry, D: number): number {
  return Math.max(g.lanes * g.sb * (g.nch + 1) * g.nq, g.lanes * D);
}

function bulkBytes(g: BulkGeometry, D: number): number {
  return (g.nq * D + redFloats(g, D) + g.lanes * BLOCK * g.nq + 2 * g.lanes * g.nq) * 4;
}

/** Parts a diagnostic build leaves out (KIVI_WEBGPU_BULK `-keys` …; results are then wrong, only the time counts). */
export const BULK_PARTS = ['keys', 'red', 'max', 'values', 'vload'] as const;

/**
 * Build options: parts left out (diagnostic), value tokens in flight a thread, weights exponentiated once a
 * token (ex) or by every thread (no ex), and the key scores as integer dot products (ik: see bulkWgsl) or
 * as float multiply-adds.
 */
export interface BulkOptions {
  skip: ReadonlySet<string>;
  u: number;
  ex: boolean;
  ik: boolean;
  /** Two kernels (keys, then values: see BulkPhase) instead of one. */
  split: boolean;
  /** A lane's partial key scores summed by subgroup shuffles (bulkSubgroups) instead of through workgroup memory. */
  sg: boolean;
  /**
   * The arenas bound as words (array<u32>: a load is one word; `aw`, the default) instead of as 16-byte
   * vectors a word is picked from by selects (`av`, as the general kernel binds them). On the H200 words made
   * kivi2's step 15–16% faster at 32 kv heads (1M and 262K tokens) and 8–10% at 4:1 and 1M, one step
   * replayed in turns (docs/perf/webgpu-h200.md, fourteenth session).
   */
  aw: boolean;
  /**
   * Value codes as exact small floats (`vx`): a code at bits p·b… of its word (p·b + b ≤ 23, else of the
   * word shifted once) becomes bitcast(0x3f800000 | (word & mask)) − 1 = code·2^(p·b − 23), one bitwise op
   * and one float subtraction, its power of two applied once per channel at the end; or (`vm`) the magic
   * float 1 + code·2^−b of the general kernel (a shift and a bitwise op a code, the offset Σ weights
   * subtracted at the end). The integer pipe, half as wide as the float one on NVIDIA, carries half as
   * many ops with `vx`, and no offset cancels. On the H200 (one step replayed in turns) within the noise at
   * 32 kv heads, 2–5% faster with kivi4 and at 4:1 (docs/perf/webgpu-h200.md, fifteenth session).
   */
  vx: boolean;
}
export const BULK_DEFAULTS: BulkOptions = { skip: new Set(), u: 8, ex: true, ik: true, split: false, sg: false, aw: true, vx: true };

/**
 * Whether the `sg` build fits a layout on a device whose subgroups have at least `subgroupMin` invocations:
 * a lane (NCH threads side by side, li / NCH) lies in one subgroup, and a round's partial scores (SB tokens
 * × NQ heads) are a whole number a thread, which a reduce-scatter leaves each thread of the lane. Assumes
 * subgroups of consecutive invocation indices, as GPUs and SwiftShader form them for a 1-D workgroup
 * (the tests and scripts/gpu/attn-check.mjs would see a lane split across two).
 */
export function bulkSubgroups(g: BulkGeometry, subgroupMin: number): boolean {
  return subgroupMin >= g.nch && g.sb * g.nq >= g.nch && (g.sb * g.nq) % g.nch === 0;
}

/**
 * What one bulk kernel does: everything (`all`), or, split in two dispatches, the key scores of the items'
 * blocks into the step's scratch (`keys`: item word 7 says where), then from those scores the softmax and
 * the values (`values`). Split, each kernel holds only its own phase's registers (the folded query and
 * key words, or the value accumulators), at the price of writing and reading 4 bytes a token and query head.
 */
export type BulkPhase = 'all' | 'keys' | 'values';

/** The largest magnitude of the int16 query values of the integer key path. */
const IK_QMAX = 32767;

export function bulkWgsl(shape: AttnShape, g: BulkGeometry, na: number, opts: BulkOptions = BULK_DEFAULTS, phase: BulkPhase = 'all'): string {
  const skip = opts.skip;
  const off = (part: string) => (skip.has(part) ? 'false && ' : '');
  const { numHeads: H, numKvHeads: KV, headDim: D } = shape;
  const { bits, cw: CW, nch: NCH, lanes: LANES, sb: SB, nq: NQ, vec: VEC } = g;
  // Which phases this kernel runs (split: keys into the scratch, or values from it), and a WGSL piece
  // that only the phase's kernel has.
  const KEYS = phase !== 'values';
  const VALS = phase !== 'keys';
  const ifK = (x: string) => (KEYS ? x : '');
  const ifV = (x: string) => (VALS ? x : '');
  const QKVD = (H + 2 * KV) * D;
  const WPR = (D * bits) / 32;
  const CPW = 32 / bits;
  // The words of a thread's CW channels in a row, and whether its codes start inside a word (shift csh).
  const NW = Math.max(1, CW / CPW);
  const partial = CW < CPW;
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);
  const J = (f: (j: number) => string, sep = '\n') => range(NQ).map(f).join(sep);
  const C = (f: (c: number) => string, sep = '\n') => range(CW).map(f).join(sep);
  // Per-head values of entry `i` of a workgroup array: NE elements an entry (vec4s of 4 heads, or f32s).
  const NE = VEC ? NQ / 4 : NQ;
  const ET = VEC ? 'vec4<f32>' : 'f32';
  const put = (arr: string, i: string, v: (j: number) => string, ind: string) =>
    range(NE)
      .map(
        (e) =>
          `${ind}${arr}[(${i}) * ${NE}u + ${e}u] = ${
            VEC
              ? `vec4<f32>(${range(4)
                  .map((x) => v(4 * e + x))
                  .join(', ')})`
              : v(e)
          };`,
      )
      .join('\n');
  const get = (name: string, arr: string, i: string, ind: string) =>
    range(NE)
      .map((e) => `${ind}let ${name}_${e} = ${arr}[(${i}) * ${NE}u + ${e}u];`)
      .join('\n');
  const head = (name: string, j: number) => (VEC ? `${name}_${j >> 2}.${'xyzw'[j & 3]}` : `${name}_${j}`);
  // Code c of this thread's channels in a row whose words are x_0, x_1, …: the float 1 + code·2^-b.
  const code = (x: string, c: number) => magic(`${x}_${Math.floor(c / CPW)}`, bits, c % CPW);
  // vx: position p of a word's codes fits the float's 23 mantissa bits below PFIT; the others are read from
  // the word shifted right by PFIT codes (once a word, where a thread owns such codes).
  const VX = opts.vx;
  const PFIT = Math.floor(23 / bits);
  const vxPos = (c: number) => (c % CPW < PFIT ? c % CPW : (c % CPW) - PFIT);
  const vxHi = (c: number) => c % CPW >= PFIT;
  const vxCode = (x: string, c: number) => {
    const mask = ((((1 << bits) - 1) << (bits * vxPos(c))) >>> 0).toString(16);
    return `(bitcast<f32>(0x3f800000u | (${x}_${Math.floor(c / CPW)}${vxHi(c) ? 'h' : ''} & 0x${mask}u)) - 1.0)`;
  };
  /** The power of two turning channel c's accumulated code·2^(p·b − 23) back into the code's weight. */
  const vxScale = (c: number) => f32lit(2 ** (23 - bits * vxPos(c)));
  const vxShifts = (x: string) =>
    range(NW)
      .filter((wi) => range(CW).some((c) => Math.floor(c / CPW) === wi && vxHi(c)))
      .map((wi) => `        let ${x}_${wi}h = ${x}_${wi} >> ${bits * PFIT}u;`)
      .join('\n');
  const words = (x: string, at: (wi: number) => string) =>
    range(NW)
      .map((wi) => `      let ${x}_${wi} = ldw(sl, ${at(wi)})${partial ? ' >> csh' : ''};`)
      .join('\n');

  // The integer key path (IK): a code word's codes in byte lanes, GB groups a word: group kk holds the
  // codes of channels b·GB + kk (b = 0..3) of the word, masked to this thread's channels.
  const IK = opts.ik;
  const GB = 8 / bits;
  const groups = range(NW).flatMap((wi) => range(GB).map((kk) => [wi, kk] as const));
  const byteChannel = (wi: number, kk: number, b: number) => wi * CPW + b * GB + kk;
  const groupMask = (wi: number, kk: number) => range(4).reduce((m, b) => (byteChannel(wi, kk, b) < CW ? m | (((1 << bits) - 1) << (8 * b)) : m), 0) >>> 0;
  const ikCodes = (x: string) =>
    groups
      .map(([wi, kk]) => `        let c${wi}_${kk} = ${kk ? `(${x}_${wi} >> ${bits * kk}u)` : `${x}_${wi}`} & 0x${groupMask(wi, kk).toString(16)}u;`)
      .join('\n');
  const ikScore = (j: number) =>
    `        var I${j} = 0i;\n        var P${j} = 0u;\n${groups
      .map(([wi, kk]) => `        I${j} += dot4I8Packed(qh${j}_${wi}_${kk}, c${wi}_${kk});\n        P${j} += dot4U8Packed(ql${j}_${wi}_${kk}, c${wi}_${kk});`)
      .join('\n')}`;
  // The folded query's int16 values n_c, as the bytes of group (wi, kk): the signed high bytes (qh) and the
  // unsigned low bytes (ql), n = 256·high + low.
  const ikPack = (j: number) =>
    groups
      .map(([wi, kk]) => {
        const bytes = range(4).filter((b) => byteChannel(wi, kk, b) < CW);
        const pack = (f: (n: string) => string) => bytes.map((b) => `(${f(`n${byteChannel(wi, kk, b)}`)} << ${8 * b}u)`).join(' | ');
        return `        qh${j}_${wi}_${kk} = ${pack((n) => `(u32(${n} >> 8u) & 0xffu)`)};\n        ql${j}_${wi}_${kk} = ${pack((n) => `(u32(${n}) & 0xffu)`)};`;
      })
      .join('\n');

  // A token's partial scores on this thread's channels: into red, or (sg) into registers sv (x·NQ + j).
  const SG = opts.sg;
  const partials = (x: number, v: (j: number) => string) =>
    SG ? J((j) => `        sv${x * NQ + j} = ${v(j)};`) : put('red', `(l * ${SB}u + ${x}u) * ${NCH + 1}u + k`, v, '        ');
  // Scores of SB tokens of the block on this thread's channels (the tokens' words loaded first).
  const keyRound = `      let sl = kslot;
${range(SB)
  .map((x) => words(`k${x}`, (wi) => `krow + (r + ${x}u) * ${WPR}u + cw0 + ${wi}u`))
  .join('\n')}
${range(SB)
  .map((x) =>
    IK
      ? `      {
${ikCodes(`k${x}`)}
${J(ikScore)}
${partials(x, (j) => `fma(A${j}, f32(I${j} * 256i + i32(P${j})), K${j})`)}
      }`
      : `      {
${C((c) => `        let v${c} = ${code(`k${x}`, c)};`)}
${J((j) => `        var S${j} = 0.0;\n${C((c) => `        S${j} = fma(qs${j}_${c}, v${c}, S${j});`)}`)}
${partials(x, (j) => `fma(KMUL, S${j}, K${j})`)}
      }`,
  )
  .join('\n')}`;

  // The value rows of U tokens of the block: code words, scale and minimum halves loaded first.
  const U = opts.u;
  const EX = opts.ex;
  const valueRound = `      let sl = vslot;
${range(U)
  .map(
    (x) => `${words(`w${x}`, (wi) => `vrow + (r + ${x}u) * ${WPR}u + cw0 + ${wi}u`)}
      let hs${x} = vsc + (r + ${x}u) * vgn;
      let hm${x} = hs${x} + vcap * vgn;
      let sw${x} = ldw(sl, hs${x} >> 1u);
      let mw${x} = ldw(sl, hm${x} >> 1u);`,
  )
  .join('\n')}
${range(U)
  .map(
    (x) => `      {
        let su = unpack2x16float(sw${x});
        let mu = unpack2x16float(mw${x});
        let sv = select(su.x, su.y, (hs${x} & 1u) != 0u);
        let mv = select(mu.x, mu.y, (hm${x} & 1u) != 0u);
${get('s', 'sc', `l * ${BLOCK}u + r + ${x}u`, '        ')}
${VX ? vxShifts(`w${x}`) : ''}
${C((c) => `        let m${c} = ${VX ? vxCode(`w${x}`, c) : code(`w${x}`, c)};`)}
${J(
  (j) => `        {
          let p = ${EX ? head('s', j) : `exp(${head('s', j)} - M${j})`};
          L${j} += p;
          let ws = p * sv;
${
  VX
    ? ''
    : `          W${j} += ws;
`
}          B${j} = fma(p, mv, B${j});
${C((c) => `          a${j}_${c} = fma(ws, m${c}, a${j}_${c});`)}
        }`,
)}
      }`,
  )
  .join('\n')}`;

  // The block's key pages and this thread's channels of the query folded with its key group's scales.
  const keyFold = `      let kp = seg_at(kseg, t0);
      let kcap = sw(kseg, 4u);
      let kbase = kp.y + h * sw(kseg, 6u);
      kslot = kp.x;
      krow = kbase + kp.z * ${WPR}u;
      let hs = (kbase + kcap * ${WPR}u) * 2u + (kp.z / kG) * D + c0;
      let hm = hs + (kcap / kG) * D;
      // The block's key scales and minimums of this thread's channels, loads from the block's arena
      // directly (behind a per-load switch over arenas, loads are not issued together).
${range(CW / 2)
  .map((i) => `      var ks${i} = vec2<f32>();\n      var km${i} = vec2<f32>();`)
  .join('\n')}
      let us = kslot;
${unswitched(
  na,
  `      let sl = kslot;\n${range(CW / 2)
    .map((i) => `      ks${i} = unpack2x16float(ldw(sl, (hs >> 1u) + ${i}u));\n      km${i} = unpack2x16float(ldw(sl, (hm >> 1u) + ${i}u));`)
    .join('\n')}\n`,
)}
${J((j) => {
  if (IK) {
    // Σ q·m, and q ⊙ s as int16 with the thread's own step α = max |q ⊙ s| / IK_QMAX.
    let s = `      {\n        var qm = 0.0;\n        var am = 0.0;\n`;
    for (let c = 0; c < CW; c++) {
      const e = c % 2 === 0 ? 'x' : 'y';
      s += `        let f${c} = qsh[${j * D}u + c0 + ${c}u];\n        let v${c} = f${c} * ks${c >> 1}.${e};\n        am = max(am, abs(v${c}));\n        qm = fma(f${c}, km${c >> 1}.${e}, qm);\n`;
    }
    s += `        let inv = select(0.0, ${f32lit(IK_QMAX)} / am, am > 0.0);\n        A${j} = am / ${f32lit(IK_QMAX)};\n        K${j} = qm;\n`;
    for (let c = 0; c < CW; c++) s += `        let n${c} = i32(clamp(round(v${c} * inv), ${f32lit(-IK_QMAX)}, ${f32lit(IK_QMAX)}));\n`;
    return `${s}${ikPack(j)}\n      }`;
  }
  let s = `      {\n        var qsum = 0.0;\n        var qm = 0.0;\n`;
  for (let c = 0; c < CW; c++) {
    const e = c % 2 === 0 ? 'x' : 'y';
    s += `        { let q = qsh[${j * D}u + c0 + ${c}u]; qs${j}_${c} = q * ks${c >> 1}.${e}; qsum += qs${j}_${c}; qm = fma(q, km${c >> 1}.${e}, qm); }\n`;
  }
  return `${s}        K${j} = qm - KMUL * qsum;\n      }`;
})}
`;
  // The block's value pages.
  const valueLookup = `      let vp = seg_at(vseg, t0);
      let vbase = vp.y + h * sw(vseg, 6u);
      vslot = vp.x;
      vcap = sw(vseg, 4u);
      vrow = vbase + vp.z * ${WPR}u;
      vsc = (vbase + vcap * ${WPR}u) * 2u + vp.z * vgn + gq;
`;

  // Where a token's scores go: the block's slots of workgroup memory, or (split) the scratch.
  const scoreOut = (e: number) =>
    phase === 'all'
      ? `sc[(l * ${BLOCK}u + r + x) * ${NE}u + ${e}u] = t${e} * SCALE;`
      : VEC
        ? range(4)
            .map((i) => `part[so + ((ps + l) * ${BLOCK}u + r + x) * NQ + ${4 * e + i}u] = t${e}[${i}] * SCALE;`)
            .join(' ')
        : `part[so + ((ps + l) * ${BLOCK}u + r + x) * NQ + ${e}u] = t${e} * SCALE;`;
  const keyLoop = `    // ---- keys: SB tokens at a time, partial scores summed across the lane's channel threads ----
    for (var r = 0u; r < ${BLOCK}u; r += ${SB}u) {
      if (${off('keys')}live) {
        let us = kslot;
${unswitched(na, keyRound)}
      }
      workgroupBarrier();
      for (var x = k; ${off('red')}live && x < ${SB}u; x += ${NCH}u) {
${range(NE)
  .map(
    (e) => `        var t${e} = red[((l * ${SB}u + x) * ${NCH + 1}u) * ${NE}u + ${e}u];
        for (var kk = 1u; kk < ${NCH}u; kk++) { t${e} += red[((l * ${SB}u + x) * ${NCH + 1}u + kk) * ${NE}u + ${e}u]; }
        ${scoreOut(e)}`,
  )
  .join('\n')}
      }
      workgroupBarrier();
    }
`;
  // The same with the partial scores summed by subgroup shuffles (sg): a reduce-scatter over the lane's NCH
  // threads (shuffles to the thread whose index differs in bit m, for m = NCH/2 … 1, each step keeping
  // half the values) leaves thread k the full scores k·HS … k·HS + HS − 1 of the round's SB·NQ (token x,
  // head j at x·NQ + j). No workgroup memory and no barrier in the loop; fused, one barrier before a pass
  // writes its scores (the last pass's values read those slots) and one after.
  const MS = SB * NQ;
  const HS = MS / NCH;
  let sgCur = range(MS).map((i) => `sv${i}`);
  let sgCode = '';
  for (let m = NCH >> 1, L = MS; m >= 1; m >>= 1, L >>= 1) {
    const half = L / 2;
    sgCode += `      let b${m} = (k & ${m}u) != 0u;\n`;
    const next = range(half).map((i) => `s${m}_${i}`);
    for (let i = 0; i < half; i++) {
      const lo = sgCur[i]!;
      const hi = sgCur[i + half]!;
      sgCode += `      let ${next[i]} = select(${lo}, ${hi}, b${m}) + subgroupShuffleXor(select(${hi}, ${lo}, b${m}), ${m}u);\n`;
    }
    sgCur = next;
  }
  const sgWrite = (i: number) => {
    const idx = `k * ${HS}u + ${i}u`;
    if (phase !== 'all') return `        part[so + ((ps + l) * ${BLOCK}u + r) * NQ + ${idx}] = ${sgCur[i]} * SCALE;`;
    const slot = `(l * ${BLOCK}u + r + (${idx}) / NQ) * ${NE}u`;
    return VEC
      ? `        sc[${slot} + ((${idx}) % NQ) / 4u][((${idx}) % NQ) % 4u] = ${sgCur[i]} * SCALE;`
      : `        sc[${slot} + (${idx}) % NQ] = ${sgCur[i]} * SCALE;`;
  };
  const keyLoopSg = `    // ---- keys: SB tokens at a time, partial scores summed by subgroup shuffles ----
${phase === 'all' ? '    workgroupBarrier();\n' : ''}    for (var r = 0u; r < ${BLOCK}u; r += ${SB}u) {
${range(MS)
  .map((i) => `      var sv${i} = 0.0;`)
  .join('\n')}
      if (${off('keys')}live) {
        let us = kslot;
${unswitched(na, keyRound)}
      }
${sgCode}      if (live) {
${range(HS).map(sgWrite).join('\n')}
      }
    }
${phase === 'all' ? '    workgroupBarrier();\n' : ''}`;
  // Split, the values' kernel reads the block's scores (the keys' kernel wrote them) into its slots.
  const scoreLoad = `    // ---- the block's scores, from the scratch (once the last pass's values have read its weights) ----
    workgroupBarrier();
    for (var x = k; live && x < ${BLOCK}u; x += ${NCH}u) {
      let sa = so + ((ps + l) * ${BLOCK}u + x) * NQ;
${range(NE)
  .map(
    (e) =>
      `      sc[(l * ${BLOCK}u + x) * ${NE}u + ${e}u] = ${
        VEC
          ? `vec4<f32>(${range(4)
              .map((i) => `part[sa + ${4 * e + i}u]`)
              .join(', ')})`
          : `part[sa + ${e}u]`
      };`,
  )
  .join('\n')}
    }
    workgroupBarrier();
`;
  const valuePhase = `    // ---- the lane's running maximum (each of its threads alike) ----
    if (live) {
${get('b', 'sc', `l * ${BLOCK}u`, '      ').replaceAll('let ', 'var ')}
      for (var r = 1u; ${off('max')}r < ${BLOCK}u; r++) {
${range(NE)
  .map((e) => `        b_${e} = max(b_${e}, sc[(l * ${BLOCK}u + r) * ${NE}u + ${e}u]);`)
  .join('\n')}
      }
${J(
  (j) => `      {
        let mn = max(M${j}, ${head('b', j)});
        if (mn > M${j}) {
          let al = exp(M${j} - mn);
          L${j} *= al;
${VX ? '' : `          W${j} *= al;\n`}          B${j} *= al;
${C((c) => `          a${j}_${c} *= al;`)}
          M${j} = mn;
        }
      }`,
)}
    }
${
  EX
    ? `    // ---- the weights exp(s − M), once a token: thread k of the lane takes tokens k, k + NCH, … ----
    workgroupBarrier();
    for (var x = k; live && x < ${BLOCK}u; x += ${NCH}u) {
${get('s', 'sc', `l * ${BLOCK}u + x`, '      ')}
${put('sc', `l * ${BLOCK}u + x`, (j) => `exp(${head('s', j)} - M${j})`, '      ')}
    }
    workgroupBarrier();`
    : ''
}
    // ---- the values, weighted on their codes ----
    if (live) {
      let us = vslot;
      for (var r = 0u; ${off('values')}r < ${BLOCK}u; r += ${U}u) {
${unswitched(na, skip.has('vload') ? valueRound.replace(/ldw\(sl, ([^;]*)\);/g, '($1);') : valueRound)}
      }
    }
`;
  // Channel c's output before the lanes combine: Σ p·(s·code + m) over the lane's tokens.
  const outC = (j: number, c: number) => (VX ? `fma(${vxScale(c)}, a${j}_${c}, B${j})` : `VMUL * (a${j}_${c} - W${j}) + B${j}`);
  const combine = `  // ---- the lanes combined (their maxima differ): this item's output, or its partial ----
  if (k == 0u) {
${J((j) => `    lm[l * NQ + ${j}u] = M${j};\n    ls[l * NQ + ${j}u] = L${j};`)}
  }
  workgroupBarrier();
${J(
  (j) => `  {
    var mg = lm[${j}u];
    for (var ll = 1u; ll < ${LANES}u; ll++) { mg = max(mg, lm[ll * NQ + ${j}u]); }
    let f = exp(M${j} - mg);
${
  VEC
    ? range(CW / 4)
        .map(
          (c4) =>
            `    red[(l * D + c0) / 4u + ${c4}u] = f * vec4<f32>(${range(4)
              .map((e) => outC(j, c4 * 4 + e))
              .join(', ')});`,
        )
        .join('\n')
    : C((c) => `    red[l * D + c0 + ${c}u] = f * (${outC(j, c)});`)
}
    workgroupBarrier();
    for (var c = li; c < D; c += ${BULK_WG}u) {
      var o = 0.0;
      var sum = 0.0;
      for (var ll = 0u; ll < ${LANES}u; ll++) {
        o += ${VEC ? 'red[(ll * D + c) / 4u][c % 4u]' : 'red[ll * D + c]'};
        sum += ls[ll * NQ + ${j}u] * exp(lm[ll * NQ + ${j}u] - mg);
      }
${writeOutput(shape, j, 'o', 'sum', 'mg', '      ')}
    }
    workgroupBarrier();
  }`,
)}
`;

  return /* wgsl */ `${SG ? 'enable subgroups;\n' : ''}
const D = ${D}u;
const NQ = ${NQ}u;
const QKVD = ${QKVD}u;
const KMUL = ${f32lit(2 ** bits)};
const VMUL = ${f32lit(2 ** bits)};
const SCALE = ${f32lit(1 / Math.sqrt(D))};
${attnBindings(na, opts.aw ? 'u32' : 'vec4<u32>')}
// The query; partial scores of SB tokens a lane (channel threads side by side), and at the end the lanes'
// outputs; each lane's block of scores; each lane's maxima and sums.
var<workgroup> qsh: array<f32, ${NQ * D}>;
var<workgroup> red: array<${ET}, ${redFloats(g, D) / (VEC ? 4 : 1)}>;
var<workgroup> sc: array<${ET}, ${(LANES * BLOCK * NQ) / (VEC ? 4 : 1)}>;
var<workgroup> lm: array<f32, ${LANES * NQ}>;
var<workgroup> ls: array<f32, ${LANES * NQ}>;

${opts.aw ? arenaWords(na) : `${arenaSwitch(na, 'ld4(s: u32, i: u32) -> vec4<u32>', (a) => `return ${a}[i];`)}\n${LDW}${na > 1 ? arenaDirect(na) : ''}`}
fn qf(i: u32) -> f32 { return qkv[i >> 2u][i & 3u]; }
${SEG_READERS}
@compute @workgroup_size(${BULK_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
${ITEM_PROLOGUE}  let kG = sw(plan[tk + 1u], 5u);
  let vG = max(plan[tk + 7u] >> 8u, 1u);
  let vgn = D / vG;
${ifK(`  for (var i = li; i < NQ * D; i += ${BULK_WG}u) { qsh[i] = qf(qrow * QKVD + h * NQ * D + i); }\n`)}  let so = plan[ib + 7u];
  let l = li / ${NCH}u;
  let k = li % ${NCH}u;
  let c0 = k * ${CW}u;
  let cw0 = c0 / ${CPW}u;
  let csh = (c0 % ${CPW}u) * ${bits}u;
  let gq = c0 / vG;
${ifV(J((j) => `  var M${j} = neg_inf();\n  var L${j} = 0.0;\n${VX ? '' : `  var W${j} = 0.0;\n`}  var B${j} = 0.0;\n${C((c) => `  var a${j}_${c} = 0.0;`)}`))}
  workgroupBarrier();
  let nb = (tb - ta) / ${BLOCK}u;
  for (var ps = 0u; ps < nb; ps += ${LANES}u) {
    let live = ps + l < nb;
    let t0 = ta + (ps + l) * ${BLOCK}u;
    // ---- the block's pages, and this thread's channels of the query folded with its key group's scales ----
${ifK(`    var kslot = 0u;
    var krow = 0u;
${J((j) =>
  IK
    ? `    var K${j} = 0.0;\n    var A${j} = 0.0;\n${groups.map(([wi, kk]) => `    var qh${j}_${wi}_${kk} = 0u;\n    var ql${j}_${wi}_${kk} = 0u;`).join('\n')}`
    : `    var K${j} = 0.0;\n${C((c) => `    var qs${j}_${c} = 0.0;`)}`,
)}`)}
${ifV(`    var vslot = 0u;
    var vrow = 0u;
    var vsc = 0u;
    var vcap = 0u;`)}
    if (live) {
${ifK(`      loop { if (t0 < seg_end(kseg)) { break; } kseg += 1u; }\n${keyFold}`)}${ifV(`      loop { if (t0 < seg_end(vseg)) { break; } vseg += 1u; }\n${valueLookup}`)}    }
${KEYS ? (SG ? keyLoopSg : keyLoop) : scoreLoad}${ifV(valuePhase)}  }
${ifV(combine)}}`;
}
