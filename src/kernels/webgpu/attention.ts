/**
 * WGSL of the cache work of a step plan, generated for one model shape (heads, kv heads, head size):
 *
 *  - attend: one workgroup per work item = (task, kv head, a run of the task's tokens). Tokens go in
 *    tiles of 128. Per tile: every thread resolves where its token's value lives (kept in workgroup
 *    memory, so the value threads walk no segments); every thread scores its token for all the kv
 *    head's query heads (a whole key row loaded before use); the tile's maximum per query head (a tree
 *    in workgroup memory) updates the workgroup's one running maximum M, and each thread turns its
 *    scores into weights exp(s − M) once; then the values are weighted, each thread owning CH channels
 *    of a stripe of the tile's tokens, with no exponential and no segment walk per token; the tile's
 *    run of KIVI value pages (or float16 pages) goes UNROLL tokens at a time, every load of the group
 *    issued before its arithmetic, so several rows are in flight per thread. A task too long for one
 *    workgroup is split over many (flash-decoding): each writes its partial maximum, sum and output, and
 *    `merge` combines them (one workgroup per item and query head, threads over slices of the partials).
 *    All tasks and kv heads of a sub-step are one dispatch (plus one merge).
 *  - KIVI keys are scored on their packed codes: the query is multiplied by the group's scales once per
 *    group and tile (in workgroup memory), q·k̂ = Σ_c (q_c·s_c)·code_c + Σ_c q_c·m_c. KIVI values are
 *    weighted on their codes: Σ_t p_t·(s_t·code + m_t) = Σ_t (p_t·s_t)·code + Σ_t p_t·m_t. Nothing is
 *    dequantized into memory. A code c is read as the float 1 + c·2^-b (its bits OR'ed into the mantissa
 *    of 1.0, two integer ops, no conversion); the 1's are subtracted once per group through the folded
 *    sums (Σ qs, Σ p·s).
 *  - jobs: one workgroup per (job, kv head): store new tokens into float32/float16 pages, quantize a key
 *    block per channel, quantize value tokens per token (bit-exact with quant/quantizer.ts: exact float16
 *    rounding and a correctly rounded division; see wgsl.ts).
 *
 * Records come from one storage buffer per plan (planbuf.ts); pages live in up to arenaCount() buffers per
 * layer (pool.ts), selected by the slot in each segment record.
 */
import { JOB_QKEY, JOB_QVAL, JOB_STORE, JOB_VALUES, SEG_F16, SEG_F32, SEG_KIVI_V, SEG_ROWS } from '../layout.js';
import type { AttnShape } from '../types.js';
import { CONVERT, DIVIDE, f32lit, GRID } from './wgsl.js';

/** GSEG_RUN (planbuf.ts) in WGSL. */
const GSEG_RUN_HEX = '0x80000000';

/** Most arena buffers (bindings) per layer: a slot is 4 bits of a page handle (pool.ts). */
export const MAX_ARENAS = 16;
/** Storage bindings of the attention kernel besides its arenas (plan, qkv, att, partials). */
const FIXED_STORAGE = 4;

/**
 * Arena bindings per layer on a device allowing `maxStorageBuffers` storage buffers per shader stage:
 * as many as the attention kernel can bind (4 × 2 GiB on the WebGPU minimum of 8; 16 × 2 GiB where the
 * device allows 20, so one layer of a 4M-token float16 cache fits), at most `cap`.
 */
export function arenaCount(maxStorageBuffers: number, cap = MAX_ARENAS): number {
  return Math.max(1, Math.min(cap, MAX_ARENAS, maxStorageBuffers - FIXED_STORAGE));
}
/** Threads per attention workgroup = tokens per tile (KIVI_WEBGPU_TILE, Node: 64 or 256 to time others). */
export const TILE = tileFromEnv();
function tileFromEnv(): number {
  const v = typeof process !== 'undefined' ? process.env?.KIVI_WEBGPU_TILE : undefined;
  return v === '64' || v === '256' ? Number(v) : 128;
}
/** Words per GPU segment record: kind | bits << 8 | slot << 16, n, base word (or first row), t0, cap, G, section words, start. */
export const GSEG_WORDS = 8;
/** Words per GPU task record: row, k0, kn, v0, vn, tokens, KIVI key tokens, value bits | G << 8. */
export const GTASK_WORDS = 8;
/** Words per attention work item: task, kv head, first token, end token, key segment, value segment, partial (or NONE). */
export const ITEM_WORDS = 8;
/** Words per merge item: task, kv head, first partial, partials. */
export const MERGE_WORDS = 4;
/** Words per job item: job, kv head. */
export const JOBITEM_WORDS = 2;
export const NO_PARTIAL = 0xffffffff;

export interface AttnGeometry {
  /** Query heads per kv head. */
  nq: number;
  /** Channels per thread in the value phase (CH · nq ≤ 32 accumulators). */
  ch: number;
  /** Key groups whose folded query fits in workgroup memory at once. */
  slots: number;
}

/** Floats of one partial (per query head: maximum, sum, two pad words, then D outputs: vec4-aligned). */
export function partialFloats(shape: AttnShape): number {
  return (shape.numHeads / shape.numKvHeads) * (shape.headDim + 4);
}

/** Workgroup bytes of the attention kernel with `s` folded key groups. */
function attnBytes(nq: number, D: number, lanes: number, s: number): number {
  const q = nq * D,
    sc = nq * TILE,
    fp = Math.max(s * nq * (D / 16) * 2, nq * 40),
    fs = s * nq * 2;
  const big = Math.max(s * nq * D, lanes * D),
    ti = 4 * TILE;
  return (q + sc + fp + fs + big + ti) * 4;
}

/**
 * Words of a staged code row (variant `stage`): a 4-bit row of D channels, whole vec4s. Staging is built
 * where 2- and 4-bit rows are both whole vec4s and at most 16 words (D a multiple of 64, at most 128).
 */
export function stageWords(D: number): number {
  return D % 64 === 0 && D <= 128 ? D / 8 : 0;
}
/** Words of a token's staged value scales and minimums (half pairs): up to 8 groups a row. */
const STAGE_META = 8;

/** How the attention kernel is laid out for a shape, given the workgroup memory the device allows. */
export function attnGeometry(shape: AttnShape, workgroupBytes: number, variant: Pick<AttnVariant, 'ch' | 'wacc' | 'stage'> = DEFAULT_VARIANT): AttnGeometry {
  const { numHeads: H, numKvHeads: KV, headDim: D } = shape;
  const nq = H / KV;
  const ch = variant.ch || (nq <= 2 ? 16 : nq <= 4 ? 8 : 4);
  // The variant wacc keeps the value accumulators in workgroup memory (attendWgsl's NACC a thread).
  if (variant.wacc) workgroupBytes -= nq * ch * TILE * 4;
  // The variant stage keeps each tile's key rows, value rows and value scales in workgroup memory.
  if (variant.stage) workgroupBytes -= TILE * (2 * stageWords(D) + STAGE_META) * 4;
  const lanes = Math.floor(TILE / (D / ch));
  // Four groups cover a tile at G = 32 (the paper's); more only costs occupancy.
  let slots = 4;
  while (slots > 1 && attnBytes(nq, D, lanes, slots) > workgroupBytes) slots--;
  if (attnBytes(nq, D, lanes, slots) > workgroupBytes) {
    throw new Error(`webgpu: attention for ${nq} query heads per kv head of ${D} needs more workgroup memory than ${workgroupBytes} bytes`);
  }
  return { nq, ch, slots };
}

/** Declarations of the first `na` arena bindings (the layout always has all the device's; unused ones stay unbound in the shader). */
function arenaDecls(ty: string, access: 'read' | 'read_write', first: number, na: number): string {
  let s = '';
  for (let i = 0; i < na; i++) s += `@group(0) @binding(${first + i}) var<storage, ${access}> a${i}: array<${ty}>;\n`;
  return s;
}

/** A function selecting arena slot `s` (no branch when one slot is in use, the usual case). */
function arenaSwitch(na: number, sig: string, body: (a: string) => string): string {
  if (na === 1) return `fn ${sig} {\n  ${body('a0')}\n}`;
  let cases = '';
  for (let i = 1; i < na; i++) cases += `    case ${i}u: { ${body(`a${i}`)} }\n`;
  return `fn ${sig} {\n  switch s {\n${cases}    default: { ${body('a0')} }\n  }\n}`;
}

/**
 * ld4 without branches: every arena is loaded, at index i in slot s and at 0 in the others (one cached
 * word), and the load of slot s selected.
 */
function arenaSelect(na: number): string {
  let body = '  var r = a0[select(0u, i, s == 0u)];\n';
  for (let k = 1; k < na; k++) body += `  r = select(r, a${k}[select(0u, i, s == ${k}u)], s == ${k}u);\n`;
  return `fn ld4(s: u32, i: u32) -> vec4<u32> {\n${body}  return r;\n}`;
}

/**
 * Loads from arena k alone (ld4_k, ldw_k, ldh_k): what the hot loops use when a tile's pages all lie in
 * one arena. Measured on an H200: a per-load switch over 3–4 arenas made the 2-bit kernel about twice
 * as slow (loads behind branches are not issued together), while one switch around the loop costs nothing.
 */
function arenaDirect(na: number): string {
  let s = '';
  for (let k = 0; k < na; k++) {
    s += `fn ld4_${k}(i: u32) -> vec4<u32> { return a${k}[i]; }\n`;
    s += `fn ldw_${k}(i: u32) -> u32 { return pick(ld4_${k}(i >> 2u), i & 3u); }\n`;
    s += `fn ldh_${k}(hi: u32) -> f32 { return f16_to_f32(half_of(ldw_${k}(hi >> 1u), hi)); }\n`;
  }
  return s;
}

/**
 * A block of kernel code whose arena loads (ld4/ldw/ldh of a slot variable) go to arena `us` directly,
 * one copy per arena, or through the per-load switch (the default case) when the tile mixes arenas.
 */
function unswitched(na: number, block: string): string {
  if (na === 1) return block;
  let cases = '';
  for (let k = 0; k < na; k++) cases += `case ${k}u: {\n${block.replace(/\b(ld4|ldw|ldh)\(sl\w*, /g, `$1_${k}(`)}}\n`;
  return `switch us {\n${cases}default: {\n${block}}\n}\n`;
}

/** The value of a b-bit code at position k of a word, as the float 1 + code·2^-b. */
function magic(word: string, bits: number, k: number): string {
  const sh = 23 - bits - bits * k;
  const mask = (((1 << bits) - 1) << (23 - bits)) >>> 0;
  const moved = sh >= 0 ? `(${word} << ${sh}u)` : `(${word} >> ${-sh}u)`;
  return `bitcast<f32>(0x3f800000u | (${moved} & 0x${mask.toString(16)}u))`;
}

/**
 * A diagnostic build of the attention kernel, for timing its parts on a GPU without a profiler
 * (scripts/gpu/attn-ablate.mjs; the backend's `attnVariant`, empty outside that script): `skip` leaves
 * parts out (`ti`: value addresses, `fold`: the query folded per key group, `keys`: KIVI key rows
 * scored, `fkeys`: full-precision key rows scored, `max`: the tile maximum's tree, `values`: the value phase; in the KIVI value loop `vscale`:
 * scale and minimum loads, `vcodes`: code loads, `unpack`: codes read as floats), and then results are wrong;
 * `unroll` (value tokens a lane loads before their arithmetic) and `ch` (value channels a thread owns)
 * override the defaults, `na` builds the kernel for at least that many arena bindings (the unused ones
 * bound to dummies), and results stay right.
 */
export interface AttnVariant {
  skip: ReadonlySet<string>;
  /** Loads from several arenas by selects instead of a switch. */
  sel: boolean;
  unroll: number;
  ch: number;
  /** Arena bindings the kernel is built for, at least (0: the pool's slots in use). */
  na: number;
  /** KIVI code widths the kernel has paths for (empty: 2, 4 and 8); other widths are not computed. */
  bits: readonly number[];
  /**
   * The value accumulators wait in workgroup memory between tiles (loaded and rescaled at each value
   * phase, stored after it), so that they are not live through the key phase. Measured on an H200 the
   * driver then gave the kernel more registers, not fewer (218 against 168 at 4:1), and it ran 1.5–2.1× as
   * slow (docs/perf/webgpu-h200.md); kept to time again on other GPUs.
   */
  wacc: boolean;
  /**
   * Each thread loads its token's 2- or 4-bit key row, value row and value scales into workgroup memory
   * while it resolves the token's addresses (all of a tile's loads in flight at once, one wait), and the
   * key and value phases read them from there instead of from the pages.
   */
  stage: boolean;
  /** Float16 key row pieces (8 channels each) loaded before their arithmetic (0: 4, or 2 where D/8 is not a multiple of 4). */
  ku: number;
}

export const ATTN_PARTS = ['ti', 'fold', 'keys', 'fkeys', 'max', 'values', 'vscale', 'vcodes', 'unpack'] as const;

/** A variant from its text: a comma list of ATTN_PARTS, `uN`, `chN`, `naN`, `bN`, `kuN`, `sel`, `wacc` and `stage` (e.g. "u2,ch8"). */
export function parseAttnVariant(text: string): AttnVariant {
  const skip = new Set<string>();
  let unroll = 0,
    ch = 0,
    na = 0,
    sel = false,
    wacc = false,
    stage = false,
    ku = 0;
  const bits: number[] = [];
  for (const w of text.split(',').filter(Boolean)) {
    if ((ATTN_PARTS as readonly string[]).includes(w)) skip.add(w);
    else if (w === 'sel') sel = true;
    else if (w === 'wacc') wacc = true;
    else if (w === 'stage') stage = true;
    else if (/^ku(1|2|4)$/.test(w)) ku = Number(w.slice(2));
    else if (/^u[1-8]$/.test(w)) unroll = Number(w.slice(1));
    else if (/^ch(4|8|16)$/.test(w)) ch = Number(w.slice(2));
    else if (/^na([1-9]|1[0-6])$/.test(w)) na = Number(w.slice(2));
    else if (/^b(2|4|8)$/.test(w)) bits.push(Number(w.slice(1)));
    else throw new Error(`attention variant "${text}": unknown part "${w}"`);
  }
  return { skip, unroll, ch, sel, na, bits, wacc, stage, ku };
}

/** The kernel on `main`: nothing left out, the default unroll and channels. */
export const DEFAULT_VARIANT: AttnVariant = { skip: new Set(), unroll: 0, ch: 0, sel: false, na: 0, bits: [], wacc: false, stage: false, ku: 0 };

export function attendWgsl(shape: AttnShape, g: AttnGeometry, na: number, variant: AttnVariant = DEFAULT_VARIANT): string {
  const off = (part: string) => (variant.skip.has(part) ? 'false && ' : '');
  const { numHeads: H, numKvHeads: KV, headDim: D } = shape;
  const { nq: NQ, ch: CH, slots: NS } = g;
  const QKVD = (H + 2 * KV) * D;
  const CHUNKS = D / CH;
  const LANES = Math.floor(TILE / CHUNKS);
  const D16 = D / 16;
  const PS = D + 4;
  const KU = variant.ku && (D / 8) % variant.ku === 0 ? variant.ku : (D / 8) % 4 === 0 ? 4 : 2;
  const FPN = Math.max(NS * NQ * D16 * 2, NQ * 40);
  const BIG = Math.max(NS * NQ * D, LANES * D) / 4;
  // Per-thread state lives in scalars (m0, a0_3, …), every index a constant: no private arrays, which
  // GPUs would put in local memory when indexed at run time.
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);
  const J = (f: (j: number) => string, sep = '\n') => range(NQ).map(f).join(sep);
  const JK = (f: (j: number, k: number) => string) =>
    range(NQ)
      .flatMap((j) => range(CH).map((k) => f(j, k)))
      .join('\n');
  const WACC = variant.wacc;
  const NACC = NQ * CH;
  // Staged rows (variant stage): SW words a token's row, SW4 vec4s.
  const SW = variant.stage ? stageWords(D) : 0;
  const STAGE = SW > 0;
  const SW4 = SW / 4;
  // Accumulator slots in `acc` (wacc): a_j_k at j · CH + k (l, W and B stay in registers).
  const accSlots = () => range(NQ).flatMap((j) => range(CH).map((k) => [`a${j}_${k}`, j * CH + k, j] as const));
  const accLoad = () =>
    accSlots()
      .map(([v, n, j]) => `    ${v} = acc[${n * TILE}u + li] * al${j};`)
      .join('\n');
  const accStore = () =>
    accSlots()
      .map(([v, n]) => `    acc[${n * TILE}u + li] = ${v};`)
      .join('\n');
  const accZero = () =>
    accSlots()
      .map(([, n]) => `  acc[${n * TILE}u + li] = 0.0;`)
      .join('\n');
  const qvec = (j: number, c: string, o = 0) =>
    `vec4<f32>(qs[${j * D + o}u + ${c}], qs[${j * D + o + 1}u + ${c}], qs[${j * D + o + 2}u + ${c}], qs[${j * D + o + 3}u + ${c}])`;

  // Scores of one token against a KIVI key row of `bits` bits: S_j = Σ qs_jc·(1 + code·2^-b).
  const hasBits = (bits: number) => variant.bits.length === 0 || variant.bits.includes(bits);
  const kiviScore = (bits: number, staged = false) => {
    if (!hasBits(bits)) return '';
    const cpw = 32 / bits;
    const wpr = (D * bits) / 32;
    // A vec4 of the row: from the tile's staged rows, or from the page.
    const row4 = (i: string) => (staged ? `kst[li * ${SW4}u + ${i}]` : `ld4(sl, (row >> 2u) + ${i})`);
    const perWord = (word: string, wi: string) => {
      let s = '';
      for (let k = 0; k < cpw; k += 4) {
        s += `          { let c4 = fb + (${wi}) * ${cpw / 4}u + ${k / 4}u;\n`;
        for (let e = 0; e < 4; e++) s += `            let v${e} = ${magic(word, bits, k + e)};\n`;
        s += `${J((j) => `            { let q = big[c4 + ${j * (D / 4)}u]; S${j} = fma(q.x, v0, fma(q.y, v1, fma(q.z, v2, fma(q.w, v3, S${j})))); }`)}\n`;
        s += '          }\n';
      }
      return s;
    };
    let body = '';
    if (wpr % 4 === 0 && wpr <= 8) {
      // The whole row first (independent loads in flight together), then the arithmetic.
      const n4 = wpr / 4;
      for (let wq = 0; wq < n4; wq++) body += `        let q4_${wq} = ${row4(`${wq}u`)};\n`;
      for (let wq = 0; wq < n4; wq++) {
        for (let e = 0; e < 4; e++) body += `        { let wd = q4_${wq}[${e}];\n${perWord('wd', `${wq * 4 + e}u`)}        }\n`;
      }
    } else if (wpr % 8 === 0) {
      // Longer rows (4 and 8 bits) two vec4s at a time: the shader stays small.
      body += `        for (var wq = 0u; wq < ${wpr / 4}u; wq += 2u) {\n          let q4_0 = ${row4('wq')};\n          let q4_1 = ${row4('wq + 1u')};\n`;
      for (let x = 0; x < 2; x++) {
        for (let e = 0; e < 4; e++) body += `          { let wd = q4_${x}[${e}];\n${perWord('wd', `(wq + ${x}u) * 4u + ${e}u`)}          }\n`;
      }
      body += '        }\n';
    } else {
      body += `        for (var wi = 0u; wi < ${wpr}u; wi++) {\n          let wd = ldw(sl, row + wi);\n${perWord('wd', 'wi')}        }\n`;
    }
    return `      if (kbits == ${bits}u) {\n        let row = kb0 + krow * ${wpr}u;\n${body}      }\n`;
  };

  // Value accumulation of one token from a KIVI value row of `bits` bits (the chunk in one group).
  const kiviValue = (bits: number) => {
    if (!hasBits(bits)) return '';
    const cpw = 32 / bits;
    let s = `            if (vbits == ${bits}u) {\n              let row = r0 + (c0 * ${bits}u) / 32u;\n`;
    const words = Math.max(1, (CH * bits) / 32);
    const partial = CH * bits < 32;
    for (let wi = 0; wi < words; wi++) {
      s += `              let w${wi} = ldw(sl, row + ${wi}u)${partial ? ` >> ((c0 % ${cpw}u) * ${bits}u)` : ''};\n`;
    }
    for (let k = 0; k < CH; k++) s += `              let m${k} = ${magic(`w${Math.floor((k * bits) / 32)}`, bits, k % cpw)};\n`;
    s += `${J(
      (j) =>
        `              { let ws = p${j} * sv; W${j} += ws; B${j} += p${j} * mv;\n` +
        range(CH)
          .map((k) => `                a${j}_${k} = fma(ws, m${k}, a${j}_${k});`)
          .join('\n') +
        '\n              }',
    )}\n`;
    return `${s}            }\n`;
  };

  // The tile's tokens in KIVI value pages (a prefix of it), UNROLL tokens of a lane at a time: every
  // load of the group is issued before any arithmetic, so several rows are in flight per thread (2 and
  // 4 bits; 8-bit values and the run's last tokens take the general loop, which keeps the shader small).
  const UNROLL = variant.unroll || 4;
  const fastValues = (bits: number, staged = false) => {
    if (!hasBits(bits)) return '';
    const cpw = 32 / bits;
    const words = Math.max(1, (CH * bits) / 32);
    const partial = CH * bits < 32;
    // Staged: the token's row and its scale and minimum words wait in vst and vsm (half gq of each).
    const oneStaged = (x: string, tt: string) => {
      let s = `          let sh${x} = gq;\n          let mh${x} = gq;\n`;
      s += `          let hs${x} = vsm[(${tt}) * ${STAGE_META}u + (gq >> 1u)];\n`;
      s += `          let hm${x} = vsm[(${tt}) * ${STAGE_META}u + ${STAGE_META / 2}u + (gq >> 1u)];\n`;
      for (let wi = 0; wi < words; wi++) s += `          let w${x}_${wi} = vst[(${tt}) * ${SW}u + wo + ${wi}u];\n`;
      return s;
    };
    const one = (x: string, tt: string) => {
      if (staged) return oneStaged(x, tt);
      let s = `          let i${x} = (${tt}) * 4u;\n          let sl${x} = ti[i${x}] >> 16u;\n`;
      s += `          let sh${x} = ti[i${x} + 2u] + gq;\n          let mh${x} = ti[i${x} + 3u] + gq;\n`;
      s += variant.skip.has('vscale')
        ? `          let hs${x} = sh${x} | 0x3c003c00u;\n          let hm${x} = mh${x} | 0x3c003c00u;\n`
        : `          let hs${x} = ldw(sl${x}, sh${x} >> 1u);\n          let hm${x} = ldw(sl${x}, mh${x} >> 1u);\n`;
      for (let wi = 0; wi < words; wi++) {
        s += variant.skip.has('vcodes')
          ? `          let w${x}_${wi} = ti[i${x} + 1u] + ${wi}u;\n`
          : `          let w${x}_${wi} = ldw(sl${x}, ti[i${x} + 1u] + wo + ${wi}u);\n`;
      }
      return s;
    };
    const use = (x: string, tt: string) => {
      let s =
        `          {\n            let su = unpack2x16float(hs${x});\n            let mu = unpack2x16float(hm${x});\n` +
        `            let sv = select(su.x, su.y, (sh${x} & 1u) != 0u);\n            let mv = select(mu.x, mu.y, (mh${x} & 1u) != 0u);\n`;
      s += `${J((j) => `            let p${j} = sc[${j * TILE}u + ${tt}];\n            l${j} += p${j};`)}\n`;
      for (let wi = 0; wi < words; wi++) s += `            let w${wi} = w${x}_${wi}${partial ? ` >> ((c0 % ${cpw}u) * ${bits}u)` : ''};\n`;
      for (let k = 0; k < CH; k++) {
        const w = `w${Math.floor((k * bits) / 32)}`;
        s += `            let m${k} = ${variant.skip.has('unpack') ? `bitcast<f32>(${w} + ${k}u)` : magic(w, bits, k % cpw)};\n`;
      }
      s += `${J(
        (j) =>
          `            { let ws = p${j} * sv; W${j} += ws; B${j} += p${j} * mv;\n` +
          range(CH)
            .map((k) => `              a${j}_${k} = fma(ws, m${k}, a${j}_${k});`)
            .join('\n') +
          '\n            }',
      )}\n`;
      return `${s}          }\n`;
    };
    const xs = range(UNROLL);
    let s = `      if (vbits == ${bits}u) {\n        let wo = (c0 * ${bits}u) / 32u;\n`;
    s += `        for (; tt + ${UNROLL - 1}u * LANES < nq; tt += ${UNROLL}u * LANES) {\n`;
    s += xs.map((x) => one(`${x}`, `tt + ${x}u * LANES`)).join('') + xs.map((x) => use(`${x}`, `tt + ${x}u * LANES`)).join('');
    // The last few tokens of the run go by the general loop below.
    return `${s}        }\n      }\n`;
  };

  // The same for float16 value pages (threads of CH channels, CH % 8 == 0: whole vec4s).
  const fastF16 = () => {
    const one = (x: string, tt: string) =>
      `          let o${x} = (ti[(${tt}) * 4u + 1u] + c0 / 2u) / 4u;\n          let sl${x} = ti[(${tt}) * 4u] >> 16u;\n` +
      range(CH / 8)
        .map((k8) => `          let h${x}_${k8} = ld4(sl${x}, o${x} + ${k8}u);\n`)
        .join('');
    const use = (x: string, tt: string) => {
      let s = '          {\n';
      s += `${J((j) => `            let p${j} = sc[${j * TILE}u + ${tt}];\n            l${j} += p${j};`)}\n`;
      s += range(CH / 2)
        .map((k2) => `            let v${k2} = unpack2x16float(h${x}_${k2 >> 2}[${k2 & 3}]) * vinv;\n`)
        .join('');
      s += `${JK((j, k) => `            a${j}_${k} = fma(p${j}, v${k >> 1}[${k & 1}], a${j}_${k});`)}\n`;
      return `${s}          }\n`;
    };
    const xs = range(UNROLL);
    let s = `        for (; tt + ${UNROLL - 1}u * LANES < nq; tt += ${UNROLL}u * LANES) {\n`;
    s += xs.map((x) => one(`${x}`, `tt + ${x}u * LANES`)).join('') + xs.map((x) => use(`${x}`, `tt + ${x}u * LANES`)).join('');
    return `${s}        }\n`;
  };

  // Variant stage: token t's KIVI key row (2 or 4 bits), value row and value scale and minimum words,
  // loaded together into workgroup memory (vec4 rows: pages and 2/4-bit rows are whole vec4s).
  const copyRows = (n4: number, load: (i: number) => string, store: (i: number, v: string) => string) =>
    range(n4)
      .map((i) => `          { let v = ${load(i)}; ${store(i, 'v')} }\n`)
      .join('');
  const valueRow = (n4: number) =>
    copyRows(
      n4,
      (i) => `ld4(sl, (r0 >> 2u) + ${i}u)`,
      (i, v) =>
        range(4)
          .map((e) => `vst[li * ${SW}u + ${4 * i + e}u] = ${v}.${'xyzw'[e]};`)
          .join(' '),
    );
  const keyRow = (n4: number) =>
    copyRows(
      n4,
      (i) => `ld4(kp.x, k4 + ${i}u)`,
      (i, v) => `kst[li * ${SW4}u + ${i}u] = ${v};`,
    );
  const stageLoads = `      if (kind == ${SEG_KIVI_V}u && vstage) {
        let sl = pg.x;
        if (vbits == 2u) {
${valueRow(SW4 / 2)}        } else {
${valueRow(SW4)}        }
${range(STAGE_META / 2)
  .map(
    (i) =>
      `        if (${i}u < vng / 2u) { vsm[li * ${STAGE_META}u + ${i}u] = ldw(sl, (r1 >> 1u) + ${i}u); vsm[li * ${STAGE_META}u + ${STAGE_META / 2 + i}u] = ldw(sl, (r2 >> 1u) + ${i}u); }\n`,
  )
  .join('')}      }
      if (t < kb && kstage) {
        var ks = kseg;
        loop { if (t < seg_end(ks)) { break; } ks += 1u; }
        let kp = seg_at(ks, t);
        let k4 = (kp.y + h * sw(ks, 6u) + kp.z * (D * kbits / 32u)) >> 2u;
        if (kbits == 2u) {
${keyRow(SW4 / 2)}        } else {
${keyRow(SW4)}        }
      }
`;
  // Several arenas bound: the arena every load of this tile goes to (us), or na when the tile's pages lie
  // in more than one (then the loads take the per-load switch). Checked against the first token's value
  // page: each thread compares its token's value page (its ti entry, just written) and KIVI key page.
  const tileArena = `    var us = ${na}u;
    {
      let first = seg_at(vseg, a).x;
      if (t < b) {
        var other = (ti[li * 4u] >> 16u) != first;
        if (t < kb) {
          var sg = kseg;
          loop { if (t < seg_end(sg)) { break; } sg += 1u; }
          other = other || seg_at(sg, t).x != first;
        }
        if (other) { mixed = a + 1u; }
      }
      if (workgroupUniformLoad(&mixed) != a + 1u && first < ${na}u) { us = first; }
    }
`;
  return /* wgsl */ `
const WG = ${TILE}u;
const D = ${D}u;
const NQ = ${NQ}u;
const NS = ${NS}u;
const D16 = ${D16}u;
const QKVD = ${QKVD}u;
const CHUNKS = ${CHUNKS}u;
const LANES = ${LANES}u;
const SCALE = ${f32lit(1 / Math.sqrt(D))};
struct P { items: u32, n: u32, tasks: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> plan: array<u32>;
@group(0) @binding(2) var<storage, read> qkv: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> att: array<f32>;
@group(0) @binding(4) var<storage, read_write> part: array<f32>;
${arenaDecls('vec4<u32>', 'read', 5, na)}
${CONVERT}
${GRID}
// The query; the tile's scores, then its softmax weights (and at the end the lanes' sums); fold partials
// (and the tile maximum's scratch); fold sums; the folded queries (and at the end the lanes' outputs);
// per token of the tile, where its value lives (segment info word, row, scale and minimum halves).
var<workgroup> qs: array<f32, ${NQ * D}>;
var<workgroup> sc: array<f32, ${NQ * TILE}>;
var<workgroup> fp: array<f32, ${FPN}>;
var<workgroup> fs: array<f32, ${NS * NQ * 2}>;
var<workgroup> big: array<vec4<f32>, ${BIG}>;
var<workgroup> ti: array<u32, ${4 * TILE}>;
${WACC ? `// Each thread's value accumulators between tiles (slot n of thread li at n · WG + li).\nvar<workgroup> acc: array<f32, ${NACC * TILE}>;` : ''}
${
  STAGE
    ? `// Staged (variant stage): token li's KIVI key row, value row, and value scale and minimum words.
var<workgroup> kst: array<vec4<u32>, ${TILE * SW4}>;
var<workgroup> vst: array<u32, ${TILE * SW}>;
var<workgroup> vsm: array<u32, ${TILE * STAGE_META}>;`
    : ''
}
${na > 1 ? '// a + 1 while tile a loads from more than one arena.\nvar<workgroup> mixed: u32;' : ''}

${variant.sel && na > 1 ? arenaSelect(na) : arenaSwitch(na, 'ld4(s: u32, i: u32) -> vec4<u32>', (a) => `return ${a}[i];`)}
${na > 1 ? arenaDirect(na) : ''}
// A word of a vec4 by selects (indexing a vector value at run time makes some compilers copy it to memory).
fn pick(v: vec4<u32>, k: u32) -> u32 { return select(select(v.x, v.y, k == 1u), select(v.z, v.w, k == 3u), k >= 2u); }
fn ldw(s: u32, i: u32) -> u32 { return pick(ld4(s, i >> 2u), i & 3u); }
fn ldh(s: u32, hi: u32) -> f32 { return f16_to_f32(half_of(ldw(s, hi >> 1u), hi)); }
fn qf(i: u32) -> f32 { return qkv[i >> 2u][i & 3u]; }
fn sw(s: u32, k: u32) -> u32 { return plan[s * ${GSEG_WORDS}u + k]; }
fn seg_end(s: u32) -> u32 { return sw(s, 7u) + sw(s, 1u); }
// Where token t (of the task) of segment s lives: (arena slot, first word of its page, its slot in the
// page). A page run (pagetables.ts) looks its page up in the run's table, kept in the plan buffer.
fn seg_at(s: u32, t: u32) -> vec3<u32> {
  let info = sw(s, 0u);
  let r = sw(s, 3u) + t - sw(s, 7u);
  if ((info & ${GSEG_RUN_HEX}u) == 0u) { return vec3<u32>(info >> 16u, sw(s, 2u), r); }
  let cap = sw(s, 4u);
  let pi = r / cap;
  let pg = plan[sw(s, 2u) + pi];
  return vec3<u32>(pg >> 27u, (pg & 0x7ffffffu) * 4u, r - pi * cap);
}

@compute @workgroup_size(${TILE})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let it = wg_index(wid, nw);
  if (it >= p.n) { return; }
  let ib = p.items + it * ${ITEM_WORDS}u;
  let task = plan[ib];
  let h = plan[ib + 1u];
  let ta = plan[ib + 2u];
  let tb = plan[ib + 3u];
  var kseg = plan[ib + 4u];
  var vseg = plan[ib + 5u];
  let pidx = plan[ib + 6u];
  let tk = p.tasks + task * ${GTASK_WORDS}u;
  let qrow = plan[tk];
  let kb = plan[tk + 6u];
  let vinfo = plan[tk + 7u];
  let vbits = vinfo & 0xffu;
  let vG = max(vinfo >> 8u, 1u);
  var kbits = 0u;
  var kG = 1u;
  if (kb > 0u) {
    kbits = (sw(plan[tk + 1u], 0u) >> 8u) & 0xffu;
    kG = sw(plan[tk + 1u], 5u);
  }
  let kmul = f32(1u << kbits);
  let vmul = f32(1u << vbits);
  let vinv = 1.0 / vmul;
${
  STAGE
    ? `  // Rows staged for 2- and 4-bit codes; value scales where a row has 2, 4 or 8 groups (whole words).
  let kstage = kbits == 2u || kbits == 4u;
  let vng = D / vG;
  let vstage = (vbits == 2u || vbits == 4u) && vG % ${CH}u == 0u && (vng == 2u || vng == 4u || vng == 8u);`
    : ''
}
  for (var i = li; i < NQ * D; i += WG) { qs[i] = qf(qrow * QKVD + h * NQ * D + i); }
  // The softmax maximum M of the tokens so far is one per query head for the whole workgroup.
${J((j) => `  var M${j} = neg_inf();\n  var l${j} = 0.0;\n  var W${j} = 0.0;\n  var B${j} = 0.0;`)}
${JK((j, k) => `  var a${j}_${k} = 0.0;`)}
${WACC ? accZero() : ''}
  let cw = li % CHUNKS;
  let u = li / CHUNKS;
  let c0 = cw * ${CH}u;
  workgroupBarrier();
  for (var a = ta; a < tb; a += WG) {
    let b = min(a + WG, tb);
    loop { if (a < seg_end(kseg)) { break; } kseg += 1u; }
    loop { if (a < seg_end(vseg)) { break; } vseg += 1u; }
    let t = a + li;
    // ---- where this thread's token keeps its value (read back by the value threads) ----
    if (${off('ti')}t < b) {
      var vs = vseg;
      loop { if (t < seg_end(vs)) { break; } vs += 1u; }
      let pg = seg_at(vs, t);
      // The record's kind and bits with the page's slot (runs resolved).
      let info = (sw(vs, 0u) & 0xffffu) | (pg.x << 16u);
      let kind = info & 0xffu;
      let vrow = pg.z;
      var r0 = 0u;
      var r1 = 0u;
      var r2 = 0u;
      if (kind == ${SEG_KIVI_V}u) {
        let cap = sw(vs, 4u);
        let vbase = pg.y + h * sw(vs, 6u);
        let wpr = D * ((info >> 8u) & 0xffu) / 32u;
        r0 = vbase + vrow * wpr;
        r1 = (vbase + cap * wpr) * 2u + vrow * (D / vG);
        r2 = r1 + cap * (D / vG);
      } else if (kind == ${SEG_F32}u) {
        r0 = pg.y + h * sw(vs, 6u) + vrow * D;
      } else if (kind == ${SEG_ROWS}u) {
        r0 = (sw(vs, 2u) + t - sw(vs, 7u)) * QKVD + (${H + KV}u + h) * D;
      } else {
        r0 = pg.y + h * sw(vs, 6u) + vrow * ${D / 2}u;
      }
      ti[li * 4u] = info;
      ti[li * 4u + 1u] = r0;
      ti[li * 4u + 2u] = r1;
      ti[li * 4u + 3u] = r2;
${STAGE ? stageLoads : ''}    }
${na > 1 ? tileArena : ''}${J((j) => `    var s${j} = neg_inf();`)}
    // ---- KIVI keys, on their codes ----
    if (a < kb) {
      let g0 = a / kG;
      let ng = (min(b, kb) - 1u) / kG - g0 + 1u;
      for (var ps = 0u; ps < ng; ps += NS) {
        let nsl = min(NS, ng - ps);
        // Fold the query with each group's scales; partial Σ qs and Σ q·m per 16 channels.
        for (var idx = li; ${off('fold')}idx < nsl * NQ * D16; idx += WG) {
          let slot = idx / (NQ * D16);
          let j = (idx / D16) % NQ;
          let cb = (idx % D16) * 16u;
          let tok = (g0 + ps + slot) * kG;
          var sg = kseg;
          loop { if (tok < seg_end(sg)) { break; } sg += 1u; }
          let info = sw(sg, 0u);
          let pg = seg_at(sg, tok);
          let sl = pg.x;
          let wpr = D * ((info >> 8u) & 0xffu) / 32u;
          let cap = sw(sg, 4u);
          let base = pg.y + h * sw(sg, 6u);
          let gi = pg.z / kG;
          let hs = (base + cap * wpr) * 2u + gi * D + cb;
          let hm = hs + (cap / kG) * D;
          var pq = 0.0;
          var pb = 0.0;
          // Scales and minimums of 16 channels, two halves a word (hs, hm even): two vec4 loads each where
          // they start a vec4 (the usual case), else word by word.
${range(8)
  .map((k) => `          var sw${k} = 0u;\n          var mw${k} = 0u;`)
  .join('\n')}
${unswitched(
  na,
  `          if ((((hs | hm) >> 1u) & 3u) == 0u) {
            let sa = ld4(sl, hs >> 3u);
            let sb = ld4(sl, (hs >> 3u) + 1u);
            let ma = ld4(sl, hm >> 3u);
            let mb = ld4(sl, (hm >> 3u) + 1u);
${range(8)
  .map((k) => `            sw${k} = s${k < 4 ? 'a' : 'b'}.${'xyzw'[k % 4]};\n            mw${k} = m${k < 4 ? 'a' : 'b'}.${'xyzw'[k % 4]};`)
  .join('\n')}
          } else {
${range(8)
  .map((k) => `            sw${k} = ldw(sl, (hs >> 1u) + ${k}u);\n            mw${k} = ldw(sl, (hm >> 1u) + ${k}u);`)
  .join('\n')}
          }
`,
)}${range(4)
  .map(
    (k) => `          {
            let c = cb + ${4 * k}u;
            let q4 = vec4<f32>(qs[j * D + c], qs[j * D + c + 1u], qs[j * D + c + 2u], qs[j * D + c + 3u]);
            let s4 = vec4<f32>(unpack2x16float(sw${2 * k}), unpack2x16float(sw${2 * k + 1}));
            let m4 = vec4<f32>(unpack2x16float(mw${2 * k}), unpack2x16float(mw${2 * k + 1}));
            let qv = q4 * s4;
            big[((slot * NQ + j) * D + c) / 4u] = qv;
            pq += (qv.x + qv.y) + (qv.z + qv.w);
            pb += dot(q4, m4);
          }`,
  )
  .join('\n')}
          fp[idx * 2u] = pq;
          fp[idx * 2u + 1u] = pb;
        }
        workgroupBarrier();
        for (var idx = li; ${off('fold')}idx < nsl * NQ; idx += WG) {
          var sq = 0.0;
          var sb = 0.0;
          for (var k = 0u; k < D16; k++) {
            sq += fp[(idx * D16 + k) * 2u];
            sb += fp[(idx * D16 + k) * 2u + 1u];
          }
          fs[idx * 2u] = sq;
          fs[idx * 2u + 1u] = sb;
        }
        workgroupBarrier();
        let gg = t / kG;
        if (${off('keys')}t < b && t < kb && gg >= g0 + ps && gg < g0 + ps + nsl) {
          let slot = gg - g0 - ps;
          var sg = kseg;
          loop { if (t < seg_end(sg)) { break; } sg += 1u; }
          let pg = seg_at(sg, t);
          let sl = pg.x;
          let kb0 = pg.y + h * sw(sg, 6u);
          let krow = pg.z;
          let fb = slot * NQ * ${D / 4}u;
${J((j) => `          var S${j} = 0.0;`)}
${STAGE ? `          if (kstage) {\n${kiviScore(2, true)}${kiviScore(4, true)}          } else {\n${unswitched(na, kiviScore(8))}          }` : unswitched(na, [2, 4, 8].map((b) => kiviScore(b)).join(''))}
${J((j) => `          s${j} = (kmul * (S${j} - fs[(slot * NQ + ${j}u) * 2u]) + fs[(slot * NQ + ${j}u) * 2u + 1u]) * SCALE;`)}
        }
        workgroupBarrier();
      }
    }
    // ---- full-precision keys: float32/float16 pages and the step's own rows ----
    if (${off('fkeys')}t < b && t >= kb) {
      var sg = kseg;
      loop { if (t < seg_end(sg)) { break; } sg += 1u; }
      let info = sw(sg, 0u);
      let kind = info & 0xffu;
      let pg = seg_at(sg, t);
      let sl = pg.x;
      let r = pg.z;
${J((j) => `      var S${j} = 0.0;`)}
      if (kind == ${SEG_ROWS}u) {
        let o4 = ((sw(sg, 2u) + t - sw(sg, 7u)) * QKVD + (${H}u + h) * D) / 4u;
        for (var c4 = 0u; c4 < ${D / 4}u; c4++) {
          let kv = qkv[o4 + c4];
${J((j) => `          S${j} += dot(kv, ${qvec(j, 'c4 * 4u')});`)}
        }
      } else if (kind == ${SEG_F32}u) {
        let o4 = (pg.y + h * sw(sg, 6u) + r * D) / 4u;
        for (var c4 = 0u; c4 < ${D / 4}u; c4++) {
          let kv = bitcast<vec4<f32>>(ld4(sl, o4 + c4));
${J((j) => `          S${j} += dot(kv, ${qvec(j, 'c4 * 4u')});`)}
        }
      } else {
        let o4 = (pg.y + h * sw(sg, 6u) + r * ${D / 2}u) / 4u;
        // ${KU} row pieces loaded before use (several loads in flight per thread).
        for (var c8 = 0u; c8 < ${D / 8}u; c8 += ${KU}u) {
${range(KU)
  .map((x) => `          let w4_${x} = ld4(sl, o4 + c8 + ${x}u);`)
  .join('\n')}
${range(KU)
  .map(
    (x) => `          {
            let k0 = vec4<f32>(unpack2x16float(w4_${x}.x), unpack2x16float(w4_${x}.y));
            let k1 = vec4<f32>(unpack2x16float(w4_${x}.z), unpack2x16float(w4_${x}.w));
${J((j) => `            S${j} += dot(k0, ${qvec(j, `(c8 + ${x}u) * 8u`)}) + dot(k1, ${qvec(j, `(c8 + ${x}u) * 8u`, 4)});`)}
          }`,
  )
  .join('\n')}
        }
      }
${J((j) => `      s${j} = S${j} * SCALE;`)}
    }
    // ---- the tile's maximum (a tree in workgroup memory), the new running maximum, the weights ----
${J((j) => `    sc[${j * TILE}u + li] = s${j};`)}
    workgroupBarrier();
    for (var idx = li; ${off('max')}idx < NQ * 32u; idx += WG) {
      let o = (idx / 32u) * WG + (idx % 32u) * 4u;
      fp[idx] = max(max(sc[o], sc[o + 1u]), max(sc[o + 2u], sc[o + 3u]));
    }
    workgroupBarrier();
    for (var idx = li; ${off('max')}idx < NQ * 8u; idx += WG) {
      let o = (idx / 8u) * 32u + (idx % 8u) * 4u;
      fp[NQ * 32u + idx] = max(max(fp[o], fp[o + 1u]), max(fp[o + 2u], fp[o + 3u]));
    }
    workgroupBarrier();
${WACC ? J((j) => `    var al${j} = 1.0;`) : ''}
${J(
  (j) => `    {
      let o = NQ * 32u + ${j * 8}u;
      let tm = max(max(max(fp[o], fp[o + 1u]), max(fp[o + 2u], fp[o + 3u])), max(max(fp[o + 4u], fp[o + 5u]), max(fp[o + 6u], fp[o + 7u])));
      let mn = max(M${j}, tm);
      if (mn > M${j}) {
        let al = exp(M${j} - mn);
        l${j} *= al;
        W${j} *= al;
        B${j} *= al;
${
  WACC
    ? `        al${j} = al;`
    : range(CH)
        .map((k) => `        a${j}_${k} *= al;`)
        .join('\n')
}
        M${j} = mn;
      }
      sc[${j * TILE}u + li] = exp(s${j} - M${j});
    }`,
)}
    workgroupBarrier();
    // ---- values: this thread's CH channels of tokens u, u + LANES, … of the tile ----
    // The tile's first nq tokens lie in KIVI value pages (they come first in a task).
    // The tile's first nq tokens lie in pages of one kind, vk0: KIVI values (quantized first in a task)
    // or float16 pages; those go by the unrolled paths.
${WACC ? accLoad() : ''}
    let vk0 = sw(vseg, 0u) & 0xffu;
    var vq = a;
    var sq = vseg;
    loop {
      if (vq >= b || (sw(sq, 0u) & 0xffu) != vk0) { break; }
      vq = seg_end(sq);
      sq += 1u;
    }
    let nq = min(vq, b) - a;
    if (${off('values')}u < LANES) {
      var tt = u;
      let gq = c0 / vG;
      if (vk0 == ${SEG_KIVI_V}u && vG % ${CH}u == 0u) {
${
  STAGE
    ? `      if (vstage) {\n${fastValues(2, true)}${fastValues(4, true)}      } else {\n${unswitched(na, fastValues(2) + fastValues(4))}      }\n`
    : unswitched(na, [2, 4].map((b) => fastValues(b)).join(''))
}      }
${
  CH % 8 === 0
    ? `      if (vk0 == ${SEG_F16}u) {
${fastF16()}      }
`
    : ''
}      for (; tt < b - a; tt += LANES) {
${J((j) => `        let p${j} = sc[${j * TILE}u + tt];\n        l${j} += p${j};`)}
        let info = ti[tt * 4u];
        let r0 = ti[tt * 4u + 1u];
        let kind = info & 0xffu;
        let sl = info >> 16u;
        if (kind == ${SEG_KIVI_V}u) {
          if (vG % ${CH}u == 0u) {
            let sv = ldh(sl, ti[tt * 4u + 2u] + c0 / vG);
            let mv = ldh(sl, ti[tt * 4u + 3u] + c0 / vG);
${[2, 4, 8].map(kiviValue).join('')}
          } else {
            // Groups narrower than a thread's chunk (rare specs): dequantize channel by channel.
            let hs = ti[tt * 4u + 2u];
            let hm = ti[tt * 4u + 3u];
            let mask = (1u << vbits) - 1u;
            let cpw = 32u / vbits;
${range(CH)
  .map(
    (k) => `            {
              let c = c0 + ${k}u;
              let v = (ldh(sl, hs + c / vG) * f32((ldw(sl, r0 + c / cpw) >> ((c % cpw) * vbits)) & mask) + ldh(sl, hm + c / vG)) * vinv;
${J((j) => `              a${j}_${k} = fma(p${j}, v, a${j}_${k});`)}
            }`,
  )
  .join('\n')}
          }
        } else if (kind == ${SEG_F32}u) {
          let o4 = (r0 + c0) / 4u;
${range(CH / 4)
  .map((k4) => `          let v${k4} = bitcast<vec4<f32>>(ld4(sl, o4 + ${k4}u)) * vinv;`)
  .join('\n')}
${JK((j, k) => `          a${j}_${k} = fma(p${j}, v${k >> 2}[${k & 3}], a${j}_${k});`)}
        } else if (kind == ${SEG_ROWS}u) {
          let o4 = (r0 + c0) / 4u;
${range(CH / 4)
  .map((k4) => `          let v${k4} = qkv[o4 + ${k4}u] * vinv;`)
  .join('\n')}
${JK((j, k) => `          a${j}_${k} = fma(p${j}, v${k >> 2}[${k & 3}], a${j}_${k});`)}
        } else {
${
  CH % 8 === 0
    ? `          let o4 = (r0 + c0 / 2u) / 4u;
${range(CH / 8)
  .map((k8) => `          let h${k8} = ld4(sl, o4 + ${k8}u);`)
  .join('\n')}
${range(CH / 2)
  .map((k2) => `          let v${k2} = unpack2x16float(h${k2 >> 2}[${k2 & 3}]) * vinv;`)
  .join('\n')}`
    : `          let ow = r0 + c0 / 2u;
${range(CH / 2)
  .map((k2) => `          let v${k2} = unpack2x16float(ldw(sl, ow + ${k2}u)) * vinv;`)
  .join('\n')}`
}
${JK((j, k) => `          a${j}_${k} = fma(p${j}, v${k >> 1}[${k & 1}], a${j}_${k});`)}
        }
      }
    }
${WACC ? accStore() : ''}
    workgroupBarrier();
  }
  // ---- sum the value lanes, one query head at a time: the output (or this split's partial) ----
${J(
  (j) => `  if (u < LANES) {
${range(CH / 4)
  .map(
    (k4) =>
      `    big[(u * D + c0) / 4u + ${k4}u] = vec4<f32>(${range(4)
        .map((e) => `vmul * (a${j}_${k4 * 4 + e} - W${j}) + B${j}`)
        .join(', ')});`,
  )
  .join('\n')}
    if (cw == 0u) { sc[u] = l${j}; }
  }
  workgroupBarrier();
  for (var c = li; c < D; c += WG) {
    var o = 0.0;
    var L = 0.0;
    for (var uu = 0u; uu < LANES; uu++) {
      o += big[(uu * D + c) / 4u][c % 4u];
      L += sc[uu];
    }
    if (pidx == ${NO_PARTIAL}u) {
      att[qrow * ${H * D}u + (h * NQ + ${j}u) * D + c] = o / L;
    } else {
      let pb = pidx * ${NQ * PS}u + ${j * PS}u;
      part[pb + 4u + c] = o;
      if (c == 0u) {
        part[pb] = M${j};
        part[pb + 1u] = L;
      }
    }
  }
  workgroupBarrier();`,
)}
}`;
}

/** Threads of a merge workgroup. */
const MERGE_WG = 256;

/**
 * Combine the partials of the splits of each (task, kv head): one workgroup per (merge item, query
 * head); threads over (a slice of the partials, 8 channels), four partials' loads in flight at a time.
 */
export function mergeWgsl(shape: AttnShape): string {
  const { numHeads: H, numKvHeads: KV, headDim: D } = shape;
  const NQ = H / KV;
  const PS = D + 4;
  const QG = D / 8;
  const RS = MERGE_WG / QG;
  return /* wgsl */ `
const MT = ${MERGE_WG}u;
const RS = ${RS}u;
struct P { items: u32, n: u32, tasks: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> plan: array<u32>;
@group(0) @binding(2) var<storage, read> part: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> att: array<f32>;
${GRID}
var<workgroup> red: array<f32, ${MERGE_WG + 16}>;
var<workgroup> ob: array<vec4<f32>, ${(RS * D) / 4}>;
var<workgroup> lb: array<f32, ${RS}>;

// Partial s of the item as vec4s: (maximum, sum, 0, 0), then D outputs.
fn pv(s: u32, j: u32, k: u32) -> vec4<f32> { return part[(s * ${NQ * PS}u + j * ${PS}u) / 4u + k]; }

@compute @workgroup_size(${MERGE_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let wg = wg_index(wid, nw);
  let it = wg / ${NQ}u;
  let j = wg % ${NQ}u;
  if (it >= p.n) { return; }
  let ib = p.items + it * ${MERGE_WORDS}u;
  let row = plan[p.tasks + plan[ib] * ${GTASK_WORDS}u];
  let h = plan[ib + 1u];
  let p0 = plan[ib + 2u];
  let np = plan[ib + 3u];
  var mx = neg_inf();
  for (var s = li; s < np; s += MT) { mx = max(mx, pv(p0 + s, j, 0u).x); }
  red[li] = mx;
  workgroupBarrier();
  if (li < 16u) {
    var m = red[li * 16u];
    for (var k = 1u; k < 16u; k++) { m = max(m, red[li * 16u + k]); }
    red[MT + li] = m;
  }
  workgroupBarrier();
  var M = red[MT];
  for (var k = 1u; k < 16u; k++) { M = max(M, red[MT + k]); }
  let r = li / ${QG}u;
  let q = li % ${QG}u;
  var L = 0.0;
  var o0 = vec4<f32>(0.0);
  var o1 = vec4<f32>(0.0);
  var s = r;
  for (; s + 3u * RS < np; s += 4u * RS) {
    let ha = pv(p0 + s, j, 0u);
    let hb = pv(p0 + s + RS, j, 0u);
    let hc = pv(p0 + s + 2u * RS, j, 0u);
    let hd = pv(p0 + s + 3u * RS, j, 0u);
    let xa0 = pv(p0 + s, j, 1u + q * 2u);
    let xa1 = pv(p0 + s, j, 2u + q * 2u);
    let xb0 = pv(p0 + s + RS, j, 1u + q * 2u);
    let xb1 = pv(p0 + s + RS, j, 2u + q * 2u);
    let xc0 = pv(p0 + s + 2u * RS, j, 1u + q * 2u);
    let xc1 = pv(p0 + s + 2u * RS, j, 2u + q * 2u);
    let xd0 = pv(p0 + s + 3u * RS, j, 1u + q * 2u);
    let xd1 = pv(p0 + s + 3u * RS, j, 2u + q * 2u);
    let ea = exp(ha.x - M);
    let eb = exp(hb.x - M);
    let ec = exp(hc.x - M);
    let ed = exp(hd.x - M);
    L += (ha.y * ea + hb.y * eb) + (hc.y * ec + hd.y * ed);
    o0 += (xa0 * ea + xb0 * eb) + (xc0 * ec + xd0 * ed);
    o1 += (xa1 * ea + xb1 * eb) + (xc1 * ec + xd1 * ed);
  }
  for (; s < np; s += RS) {
    let hx = pv(p0 + s, j, 0u);
    let e = exp(hx.x - M);
    L += hx.y * e;
    o0 += pv(p0 + s, j, 1u + q * 2u) * e;
    o1 += pv(p0 + s, j, 2u + q * 2u) * e;
  }
  ob[r * ${D / 4}u + q * 2u] = o0;
  ob[r * ${D / 4}u + q * 2u + 1u] = o1;
  if (q == 0u) { lb[r] = L; }
  workgroupBarrier();
  for (var c = li; c < ${D}u; c += MT) {
    var O = 0.0;
    var LL = 0.0;
    for (var rr = 0u; rr < RS; rr++) {
      O += ob[rr * ${D / 4}u + c / 4u][c % 4u];
      LL += lb[rr];
    }
    att[row * ${H * D}u + (h * ${NQ}u + j) * ${D}u + c] = O / LL;
  }
}`;
}

/** Values (or codes) staged in workgroup memory by a quantization job per pass. */
const JOB_BUF = 1024;
/** Per-(token, group) parameters a value job keeps per pass. */
const JOB_PARAMS = 256;
/** Threads of a job's workgroup. */
const JOB_WG = 128;

/**
 * The cache jobs of one phase: store, quantize key blocks, quantize value tokens. One workgroup per
 * (job, kv head), all its threads on one job: the source values are read in passes of a few tokens by
 * every thread at once (one load each) and staged in workgroup memory, so the minimum, maximum and codes
 * of a group are found without a chain of dependent loads per thread (a job is latency, not bytes: it
 * runs once per layer and step beside attention).
 */
export function jobsWgsl(shape: AttnShape, na: number): string {
  const { numHeads: H, numKvHeads: KV, headDim: D } = shape;
  const QKVD = (H + 2 * KV) * D;
  // A key job's thread keeps the ranges of two channels, a value job's parameters fit JOB_PARAMS.
  const most = Math.min(JOB_PARAMS, 2 * JOB_WG);
  if (D > most) throw new Error(`webgpu: cache jobs for a head size of ${D} (at most ${most})`);
  return /* wgsl */ `
const D = ${D}u;
const WG = ${JOB_WG}u;
const TB = ${Math.max(1, Math.floor(JOB_BUF / D))}u;
struct P { items: u32, n: u32, jobs: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> plan: array<u32>;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
${arenaDecls('u32', 'read_write', 3, na)}
${CONVERT}
${DIVIDE}
${GRID}
// A pass's source values (float bits) or codes; per channel (keys) or per token group (values) the
// scale and minimum as floats and as float16 halves (scale | minimum << 16).
var<workgroup> buf: array<u32, ${JOB_BUF}>;
var<workgroup> ps: array<f32, ${JOB_PARAMS}>;
var<workgroup> pm: array<f32, ${JOB_PARAMS}>;
var<workgroup> ph: array<u32, ${JOB_PARAMS}>;

${arenaSwitch(na, 'lda(s: u32, i: u32) -> u32', (a) => `return ${a}[i];`)}
${arenaSwitch(na, 'sta(s: u32, i: u32, v: u32)', (a) => `${a}[i] = v;`)}
fn sw(s: u32, k: u32) -> u32 { return plan[s * ${GSEG_WORDS}u + k]; }

// Channel c of the job's i-th source token (kv head h; part = q/k/v column block of SEG_ROWS sources).
fn src(s0: u32, sn: u32, part: u32, h: u32, i: u32, c: u32) -> f32 {
  var sg = s0;
  loop {
    if (sg + 1u >= s0 + sn || i < sw(sg, 7u) + sw(sg, 1u)) { break; }
    sg += 1u;
  }
  let info = sw(sg, 0u);
  let kind = info & 0xffu;
  let sl = info >> 16u;
  let r = sw(sg, 3u) + i - sw(sg, 7u);
  if (kind == ${SEG_ROWS}u) {
    return qkv[(sw(sg, 2u) + i - sw(sg, 7u)) * ${QKVD}u + part * D + c];
  }
  let base = sw(sg, 2u) + h * sw(sg, 6u);
  if (kind == ${SEG_F32}u) { return bitcast<f32>(lda(sl, base + r * D + c)); }
  let e = r * D + c;
  return f16_to_f32(half_of(lda(sl, base + e / 2u), e));
}

// A group's (scale, minimum) as float16 bits, as quant/quantizer.ts quantizeGroup computes them.
fn params(lo: f32, hi: f32, maxc: f32) -> u32 {
  return f32_to_f16(div_rn(hi - lo, maxc)) | (f32_to_f16(lo) << 16u);
}

fn code(v: f32, s: f32, m: f32, maxc: f32) -> u32 {
  if (s == 0.0) { return 0u; }
  return u32(clamp(rhe(div_rn(v - m, s)), 0.0, maxc));
}

@compute @workgroup_size(${JOB_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let it = wg_index(wid, nw);
  if (it >= p.n) { return; }
  let jb = p.jobs + plan[p.items + it * 2u] * 8u;
  let h = plan[p.items + it * 2u + 1u];
  let kind = plan[jb];
  let part = select(${H}u, ${H + KV}u, plan[jb + 1u] == ${JOB_VALUES}u) + h;
  let s0 = plan[jb + 2u];
  let sn = plan[jb + 3u];
  let ds = plan[jb + 4u];
  let dinfo = sw(ds, 0u);
  let dkind = dinfo & 0xffu;
  let dbits = (dinfo >> 8u) & 0xffu;
  let dsl = dinfo >> 16u;
  let dn = sw(ds, 1u);
  let dbase = sw(ds, 2u) + h * sw(ds, 6u);
  let dt0 = sw(ds, 3u);
  let cap = sw(ds, 4u);
  let G = max(sw(ds, 5u), 1u);
  if (kind == ${JOB_STORE}u) {
    if (dkind == ${SEG_F32}u) {
      for (var idx = li; idx < dn * D; idx += WG) {
        let i = idx / D;
        let c = idx % D;
        sta(dsl, dbase + (dt0 + i) * D + c, bitcast<u32>(src(s0, sn, part, h, i, c)));
      }
    } else {
      for (var idx = li; idx < dn * D / 2u; idx += WG) {
        let i = idx / (D / 2u);
        let c = (idx % (D / 2u)) * 2u;
        let lo = f32_to_f16(src(s0, sn, part, h, i, c));
        let hi = f32_to_f16(src(s0, sn, part, h, i, c + 1u));
        sta(dsl, dbase + ((dt0 + i) * D + c) / 2u, lo | (hi << 16u));
      }
    }
    return;
  }
  let maxc = f32((1u << dbits) - 1u);
  let cpw = 32u / dbits;
  let wpr = D / cpw;
  let sbase = (dbase + cap * wpr) * 2u;
  if (kind == ${JOB_QKEY}u) {
    // Per channel over each group of G tokens: the range from passes of TB tokens, then the codes.
    let mbase = sbase + (cap / G) * D;
    for (var g = 0u; g < cap / G; g++) {
      // Thread li keeps the range of channel li and (D > WG) of channel li + WG: D ≤ 2·WG.
      var lo0 = pos_inf();
      var hi0 = neg_inf();
      var lo1 = pos_inf();
      var hi1 = neg_inf();
      for (var i0 = 0u; i0 < G; i0 += TB) {
        let nt = min(TB, G - i0);
        for (var idx = li; idx < nt * D; idx += WG) { buf[idx] = bitcast<u32>(src(s0, sn, part, h, g * G + i0 + idx / D, idx % D)); }
        workgroupBarrier();
        for (var k = 0u; k < nt; k++) {
          if (li < D) {
            let v = bitcast<f32>(buf[k * D + li]);
            lo0 = min(lo0, v);
            hi0 = max(hi0, v);
          }
          if (li + WG < D) {
            let v = bitcast<f32>(buf[k * D + li + WG]);
            lo1 = min(lo1, v);
            hi1 = max(hi1, v);
          }
        }
        workgroupBarrier();
      }
      for (var c = li; c < D; c += WG) {
        let pr = params(select(lo0, lo1, c >= WG), select(hi0, hi1, c >= WG), maxc);
        ph[c] = pr;
        ps[c] = f16_to_f32(pr & 0xffffu);
        pm[c] = f16_to_f32(pr >> 16u);
      }
      workgroupBarrier();
      for (var cp = li; cp < D / 2u; cp += WG) {
        let a = ph[cp * 2u];
        let b = ph[cp * 2u + 1u];
        sta(dsl, (sbase + g * D + cp * 2u) / 2u, (a & 0xffffu) | (b << 16u));
        sta(dsl, (mbase + g * D + cp * 2u) / 2u, (a >> 16u) | (b & 0xffff0000u));
      }
      // The group's values again, now as codes (the whole group would not fit workgroup memory at once).
      for (var i0 = 0u; i0 < G; i0 += TB) {
        let nt = min(TB, G - i0);
        for (var idx = li; idx < nt * D; idx += WG) {
          let c = idx % D;
          buf[idx] = code(src(s0, sn, part, h, g * G + i0 + idx / D, c), ps[c], pm[c], maxc);
        }
        workgroupBarrier();
        for (var idx = li; idx < nt * wpr; idx += WG) {
          let tk = idx / wpr;
          let o = tk * D + (idx % wpr) * cpw;
          var word = 0u;
          for (var k = 0u; k < cpw; k++) { word = word | (buf[o + k] << (k * dbits)); }
          sta(dsl, dbase + (g * G + i0 + tk) * wpr + idx % wpr, word);
        }
        workgroupBarrier();
      }
    }
    return;
  }
  if (kind == ${JOB_QVAL}u) {
    // Per token and group of G channels, in passes of tokens: the values staged, one thread per group
    // finds its range, one thread per code word packs it. Parameters are halves [slot][group], two a
    // word; a word shared with a token outside the pass keeps that half.
    let gpt = D / G;
    let tb = max(1u, min(TB, ${JOB_PARAMS}u / gpt));
    let mbase = sbase + cap * gpt;
    for (var i0 = 0u; i0 < dn; i0 += tb) {
      let nt = min(tb, dn - i0);
      for (var idx = li; idx < nt * D; idx += WG) { buf[idx] = bitcast<u32>(src(s0, sn, part, h, i0 + idx / D, idx % D)); }
      workgroupBarrier();
      for (var q = li; q < nt * gpt; q += WG) {
        let o = (q / gpt) * D + (q % gpt) * G;
        var lo = pos_inf();
        var hi = neg_inf();
        for (var k = 0u; k < G; k++) {
          let v = bitcast<f32>(buf[o + k]);
          lo = min(lo, v);
          hi = max(hi, v);
        }
        let pr = params(lo, hi, maxc);
        ph[q] = pr;
        ps[q] = f16_to_f32(pr & 0xffffu);
        pm[q] = f16_to_f32(pr >> 16u);
      }
      workgroupBarrier();
      for (var idx = li; idx < nt * wpr; idx += WG) {
        let tk = idx / wpr;
        let c0 = (idx % wpr) * cpw;
        var word = 0u;
        for (var k = 0u; k < cpw; k++) {
          let q = tk * gpt + (c0 + k) / G;
          word = word | (code(bitcast<f32>(buf[tk * D + c0 + k]), ps[q], pm[q], maxc) << (k * dbits));
        }
        sta(dsl, dbase + (dt0 + i0 + tk) * wpr + idx % wpr, word);
      }
      for (var arr = 0u; arr < 2u; arr++) {
        let h0 = select(sbase, mbase, arr == 1u) + (dt0 + i0) * gpt;
        let h1 = h0 + nt * gpt;
        for (var wq = h0 / 2u + li; wq <= (h1 - 1u) / 2u; wq += WG) {
          var word = 0u;
          if (wq * 2u < h0 || wq * 2u + 1u >= h1) { word = lda(dsl, wq); }
          for (var hf = 0u; hf < 2u; hf++) {
            let hx = wq * 2u + hf;
            if (hx >= h0 && hx < h1) {
              let v = (ph[hx - h0] >> (arr * 16u)) & 0xffffu;
              word = select((word & 0xffffu) | (v << 16u), (word & 0xffff0000u) | v, hf == 0u);
            }
          }
          sta(dsl, wq, word);
        }
      }
      // The next pass may read back a word this one wrote (a half of its first token's parameters).
      storageBarrier();
      workgroupBarrier();
    }
  }
}`;
}
