/**
 * WGSL of decode and prefill attention over a step plan, generated for one model shape (heads, kv heads,
 * head size):
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
 *
 * Records come from one storage buffer per plan (planbuf.ts, records.ts); pages live in up to
 * arenaCount() buffers per layer (pool.ts, arenas.ts), selected by the slot in each segment record. The
 * merge (merge.ts) and the cache jobs (jobs.ts) are kernels of their own.
 */
import { SEG_F16, SEG_F32, SEG_KIVI_V, SEG_ROWS } from '../layout.js';
import type { AttnShape } from '../types.js';
import { arenaDirect, arenaSelect, arenaSwitch, LDW, unswitched } from './arenas.js';
import { type AttnVariant, DEFAULT_VARIANT } from './attn-variant.js';
import { attnBindings, ITEM_PROLOGUE, NO_PARTIAL, SEG_READERS } from './records.js';
import { f32lit } from './wgsl.js';

/** Threads per attention workgroup = tokens per tile (KIVI_WEBGPU_TILE, Node: 64 or 256 to time others). */
export const TILE = tileFromEnv();
function tileFromEnv(): number {
  const v = typeof process !== 'undefined' ? process.env?.KIVI_WEBGPU_TILE : undefined;
  return v === '64' || v === '256' ? Number(v) : 128;
}

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

/**
 * WGSL writing query head j's output channel c of a work item: the normalized output itself (o / sum) when
 * the item is its task's only one, else its partial (maximum, sum, then the unnormalized outputs) for merge.
 * `o`, `sum` and `max` are WGSL expressions; qrow, h, pidx and c are the kernel's.
 */
export function writeOutput(shape: AttnShape, j: number, o: string, sum: string, max: string, ind: string): string {
  const { numHeads: H, numKvHeads: KV, headDim: D } = shape;
  const NQ = H / KV;
  const PS = partialFloats(shape) / NQ;
  return `${ind}if (pidx == ${NO_PARTIAL}u) {
${ind}  att[qrow * ${H * D}u + (h * ${NQ}u + ${j}u) * ${D}u + c] = ${o} / ${sum};
${ind}} else {
${ind}  let pb = pidx * ${NQ * PS}u + ${j * PS}u;
${ind}  part[pb + 4u + c] = ${o};
${ind}  if (c == 0u) {
${ind}    part[pb] = ${max};
${ind}    part[pb + 1u] = ${sum};
${ind}  }
${ind}}`;
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

/** The value of a b-bit code at position k of a word, as the float 1 + code·2^-b. */
export function magic(word: string, bits: number, k: number): string {
  const sh = 23 - bits - bits * k;
  const mask = (((1 << bits) - 1) << (23 - bits)) >>> 0;
  const moved = sh >= 0 ? `(${word} << ${sh}u)` : `(${word} >> ${-sh}u)`;
  return `bitcast<f32>(0x3f800000u | (${moved} & 0x${mask.toString(16)}u))`;
}

export function attendWgsl(shape: AttnShape, g: AttnGeometry, na: number, variant: AttnVariant = DEFAULT_VARIANT): string {
  const off = (part: string) => (variant.skip.has(part) ? 'false && ' : '');
  const { numHeads: H, numKvHeads: KV, headDim: D } = shape;
  const { nq: NQ, ch: CH, slots: NS } = g;
  const QKVD = (H + 2 * KV) * D;
  const CHUNKS = D / CH;
  const LANES = Math.floor(TILE / CHUNKS);
  const D16 = D / 16;
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

  // KIVI key scores summed in KP partial sums a query head (variant kpN: shorter chains of dependent
  // multiply-adds), the i-th 4 codes of a word into partial i mod KP; S_j itself is partial 0.
  const KP = variant.kp || 1;
  const kAcc = (j: number, i: number) => (i % KP === 0 ? `S${j}` : `S${j}_${i % KP}`);
  const kAccDecl = () =>
    J((j) =>
      range(KP - 1)
        .map((i) => `          var S${j}_${i + 1} = 0.0;`)
        .join('\n'),
    );
  const kAccSum = () =>
    J(
      (j) =>
        `          S${j} += ${range(KP - 1)
          .map((i) => `S${j}_${i + 1}`)
          .join(' + ')};`,
    );
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
        const S = (j: number) => kAcc(j, k / 4);
        s += `${J((j) => `            { let q = big[c4 + ${j * (D / 4)}u]; ${S(j)} = fma(q.x, v0, fma(q.y, v1, fma(q.z, v2, fma(q.w, v3, ${S(j)})))); }`)}\n`;
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
${attnBindings(na)}
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
${na > 1 ? arenaDirect(na) : ''}${LDW}
fn ldh(s: u32, hi: u32) -> f32 { return f16_to_f32(half_of(ldw(s, hi >> 1u), hi)); }
fn qf(i: u32) -> f32 { return qkv[i >> 2u][i & 3u]; }
${SEG_READERS}
@compute @workgroup_size(${TILE})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32) {
${ITEM_PROLOGUE}  let kb = plan[tk + 6u];
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
${KP > 1 ? `${kAccDecl()}\n` : ''}${STAGE ? `          if (kstage) {\n${kiviScore(2, true)}${kiviScore(4, true)}          } else {\n${unswitched(na, kiviScore(8))}          }` : unswitched(na, [2, 4, 8].map((b) => kiviScore(b)).join(''))}
${KP > 1 ? `${kAccSum()}\n` : ''}${J((j) => `          s${j} = (kmul * (S${j} - fs[(slot * NQ + ${j}u) * 2u]) + fs[(slot * NQ + ${j}u) * 2u + 1u]) * SCALE;`)}
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
${writeOutput(shape, j, 'o', 'L', `M${j}`, '    ')}
  }
  workgroupBarrier();`,
)}
}`;
}
