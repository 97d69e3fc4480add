// On the GPU machine (after `npm run build` here and `source scripts/gpu/setup.sh` there):
//   node scripts/gpu/attn-ladder.mjs     (ROWS=2097152 NQ=4 [SWIFTSHADER=1])
// A ladder of small kernels, each one part of decode attention's work on its own, to find what the real
// kernel (attention.ts) spends its time on where WebGPU gives no profiler. ROWS token rows of one kv head
// each (a 1M-token context with 2 kv heads is 2097152 rows), head size 128, NQ query heads per kv head.
// Every rung is one thread per row (or, for the values, the real kernel's thread layout), 128 threads a
// workgroup, grid-stride over the rows from 2048 workgroups (the attention kernel's item count), with
// nothing else: no pages, no segments, no barriers in the loop, no softmax across rows. Times are medians
// of 7 rounds of 20 dispatches; the outputs are summed only so the compiler keeps the work.
import { createBackend } from '../../dist/src/kernels/index.js';
import { magic } from '../../dist/src/kernels/webgpu/attention.js';

const env = process.env;
const ROWS = Number(env.ROWS ?? 2097152);
const NQ = Number(env.NQ ?? 4);
const D = 128;
const WG = 128;
const GROUPS = 2048;
// Value channels a thread (attention.ts attnGeometry): 16 up to 2 query heads a kv head, else 8.
const CH = NQ <= 2 ? 16 : 8;
const CHUNKS = D / CH;
const LANES = WG / CHUNKS;
// This thread's CH codes of row r (a word holds 16): shifted down to bit 0.
const vword = (r) => (CH === 16 ? `a[${r} * 2u + cw / 4u][cw % 4u]` : `a[${r} * 2u + cw / 8u][(cw / 2u) % 4u] >> ((cw % 2u) * 16u)`);
const b = await createBackend({ backend: 'webgpu', webgpu: { serialMatmul: false, swiftshader: env.SWIFTSHADER === '1' } });
console.log(b.description, `rows ${ROWS}, ${NQ} query heads a kv head, d ${D}`);
const core = b.core;
const range = (n) => Array.from({ length: n }, (_, i) => i);

const HEAD = /* wgsl */ `
struct P { n: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> a: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> m: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> o: array<f32>;
var<workgroup> big: array<vec4<f32>, ${(NQ * D) / 4}>;
var<workgroup> sc: array<f32, ${NQ * WG}>;
var<workgroup> tm: array<f32, ${NQ * 32}>;
var<workgroup> fq: array<vec4<f32>, ${4 * NQ * 32}>;
var<workgroup> fp: array<f32, ${4 * NQ * 32 * 2}>;
var<workgroup> fs: array<f32, ${4 * NQ * 2}>;
var<workgroup> qw: array<vec4<u32>, ${NQ * 16}>;
`;
const init = /* wgsl */ `
  for (var i = li; i < ${(NQ * D) / 4}u; i += ${WG}u) { big[i] = vec4<f32>(f32(i) * 1e-3, 0.5, -0.25, 1.0); }
  for (var i = li; i < ${NQ * WG}u; i += ${WG}u) { sc[i] = 1.0 / f32(i + 1u); }
  for (var i = li; i < ${NQ * 16}u; i += ${WG}u) { qw[i] = vec4<u32>(i * 0x01030507u, i * 0x0b0d1113u, i * 0x17191d1fu, i * 0x25292b2fu); }
  workgroupBarrier();
  let stride = nw.x * ${WG}u;
`;
const main = (body) => `${HEAD}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>, @builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {
${init}${body}
}`;
// A 2-bit code k of a word as the float 1 + code/4, as the attention kernel reads it.
const magic2 = (w, k) => magic(w, 2, k);
// Scores of one 2-bit key row (8 words) for NQ heads, as attention.ts kiviScore does it.
const score2 = (q = 'big[c4 + ') => {
  let s = range(NQ)
    .map((j) => `    var S${j} = 0.0;`)
    .join('\n');
  s += '\n    let q4_0 = a[t * 2u];\n    let q4_1 = a[t * 2u + 1u];\n';
  for (let wq = 0; wq < 2; wq++) {
    for (let e = 0; e < 4; e++) {
      s += `    { let wd = q4_${wq}[${e}];\n`;
      for (let k = 0; k < 16; k += 4) {
        s += `      { let c4 = ${(wq * 4 + e) * 4 + k / 4}u;\n`;
        for (let x = 0; x < 4; x++) s += `        let v${x} = ${magic2('wd', k + x)};\n`;
        s += range(NQ)
          .map((j) => `        { let q = ${q}${(j * D) / 4}u]; S${j} = fma(q.x, v0, fma(q.y, v1, fma(q.z, v2, fma(q.w, v3, S${j})))); }`)
          .join('\n');
        s += '\n      }\n';
      }
      s += '    }\n';
    }
  }
  return s;
};
// The value sums in the real kernel's layout (attention.ts): a thread owns CH channels of a stripe of rows,
// NQ·CH accumulators and per head W = Σ p·s, B = Σ p·m; one row's codes, scale and minimum (a word of the
// second array) added with the weights in sc.
const valueDecls = () =>
  `${range(NQ)
    .map((j) =>
      range(CH)
        .map((k) => `  var a${j}_${k} = 0.0;`)
        .join('\n'),
    )
    .join('\n')}\n${range(NQ)
    .map((j) => `  var W${j} = 0.0;\n  var B${j} = 0.0;`)
    .join('\n')}`;
const valueRow = (r) => `      let w = ${vword(r)};
      let smw = m[${r} / 4u][${r} % 4u];
      let sv = unpack2x16float(smw).x;
      let mv = unpack2x16float(smw).y;
${range(CH)
  .map((k) => `      let m${k} = ${magic2('w', k)};`)
  .join('\n')}
${range(NQ)
  .map(
    (j) =>
      `      { let pj = sc[${j * WG}u + tt]; let ws = pj * sv; W${j} += ws; B${j} += pj * mv;\n${range(CH)
        .map((k) => `        a${j}_${k} = fma(ws, m${k}, a${j}_${k});`)
        .join('\n')}\n      }`,
  )
  .join('\n')}`;
const valueSum = () =>
  range(NQ)
    .map(
      (j) =>
        `W${j} + B${j} + ${range(CH)
          .map((k) => `a${j}_${k}`)
          .join(' + ')}`,
    )
    .join(' + ');
// The fold of a tile's 4 key groups (attention.ts's fold phase, simplified): q times the group's scales
// into fq, Σ qs and Σ q·m per group and head into fs.
const foldPhase = `    for (var i = li; i < ${4 * NQ * 32}u; i += ${WG}u) {
      let slot = i / ${NQ * 32}u;
      let j = (i / 32u) % ${NQ}u;
      let c4 = i % 32u;
      let grp = t0 / 32u + slot;
      let sm = m[(grp * 64u + c4 * 2u) % arrayLength(&m)];
      let s4 = vec4<f32>(unpack2x16float(sm.x), unpack2x16float(sm.y));
      let m4 = vec4<f32>(unpack2x16float(sm.z), unpack2x16float(sm.w));
      let q4 = big[j * 32u + c4];
      let qs = q4 * s4;
      fq[i] = qs;
      fp[i * 2u] = (qs.x + qs.y) + (qs.z + qs.w);
      fp[i * 2u + 1u] = dot(q4, m4);
    }
    workgroupBarrier();
    for (var i = li; i < ${4 * NQ}u; i += ${WG}u) {
      var a = 0.0;
      var c = 0.0;
      for (var k = 0u; k < 32u; k++) { a += fp[(i * 32u + k) * 2u]; c += fp[(i * 32u + k) * 2u + 1u]; }
      fs[i * 2u] = a;
      fs[i * 2u + 1u] = c;
    }
    workgroupBarrier();
`;
// The fused rung's body: `bar` puts the barriers in.
const fusedBody = (bar, fold = false) => {
  const B = bar ? '    workgroupBarrier();\n' : '';
  return `  let cw = li % ${CHUNKS}u;
  let u = li / ${CHUNKS}u;
${valueDecls()}
  for (var t0 = wid.x * ${WG}u; t0 < p.n; t0 += stride) {
    let t = t0 + li;
${fold ? foldPhase : ''}${score2(fold ? `fq[(li / 32u) * ${NQ * 32}u + c4 + ` : undefined)}${
  fold
    ? range(NQ)
        .map((j) => `\n    S${j} = 4.0 * (S${j} - fs[(li / 32u) * ${NQ * 2}u + ${2 * j}u]) + fs[(li / 32u) * ${NQ * 2}u + ${2 * j + 1}u];`)
        .join('')
    : ''
}
${range(NQ)
  .map((j) => `    sc[${j * WG}u + li] = S${j};`)
  .join('\n')}
${B}    for (var i = li; i < ${NQ * 32}u; i += ${WG}u) {
      let o = (i / 32u) * ${WG}u + (i % 32u) * 4u;
      tm[i] = max(max(sc[o], sc[o + 1u]), max(sc[o + 2u], sc[o + 3u]));
    }
${B}${range(NQ)
  .map(
    (j) => `    {
      var mx = tm[${j * 32}u];
      for (var k = 1u; k < 32u; k++) { mx = max(mx, tm[${j * 32}u + k]); }
      let e = exp(S${j} - mx);
${B.replace('    ', '      ')}      sc[${j * WG}u + li] = e;
    }`,
  )
  .join('\n')}
${B}    for (var tt = u; tt < ${WG}u; tt += ${LANES}u) {
      let tr = t0 + tt;
${valueRow('tr')}
    }
${B}  }
  o[g.x] = ${valueSum()};`;
};
// Scores of one 2-bit key row for NQ heads with packed 8-bit integer dot products (WGSL's
// dot4I8Packed/dot4U8Packed; DP4A where the driver has it): the folded query quantized to int16 as the
// wasm kernel does (kivi.ts), each value split into a signed high byte and an unsigned low byte, so one
// group of 4 codes costs one mask (and a shift) for every head and two dot products a head; lo8: the high
// bytes only (an int8 query), for the speed of one dot product a head.
const scoreDp4a = (hiOnly) => {
  let s = range(NQ)
    .map((j) => `    var I${j} = 0i;${hiOnly ? '' : ` var L${j} = 0u;`}`)
    .join('\n');
  s += '\n    let q4_0 = a[t * 2u];\n    let q4_1 = a[t * 2u + 1u];\n';
  for (let wi = 0; wi < 8; wi++) {
    s += `    { let wd = q4_${wi >> 2}[${wi & 3}];\n`;
    for (let k = 0; k < 4; k++) {
      s += `      { let c = ${k ? `(wd >> ${2 * k}u)` : 'wd'} & 0x03030303u;\n`;
      s += range(NQ)
        .map((j) => {
          const q = `qw[${j * 16 + wi * 2 + (k >> 1)}u]`;
          const [hi, lo] = k & 1 ? ['z', 'w'] : ['x', 'y'];
          return `        I${j} += dot4I8Packed(${q}.${hi}, c);${hiOnly ? '' : ` L${j} += dot4U8Packed(${q}.${lo}, c);`}`;
        })
        .join('\n');
      s += '\n      }\n';
    }
    s += '    }\n';
  }
  s += range(NQ)
    .map((j) => `    let S${j} = f32(${hiOnly ? `I${j}` : `I${j} * 256i + i32(L${j})`});`)
    .join('\n');
  return `${s}\n`;
};
// A rung that sums one thread's rows' scores (S0…) for every head: `score` computes them for row t.
const scoreRung = (score) =>
  main(`  var acc = 0.0;
  for (var t = g.x; t < p.n; t += stride) {
${score}
    acc += ${range(NQ)
      .map((j) => `S${j}`)
      .join(' + ')};
  }
  o[g.x] = acc;`);
// The value sums in the bulk kernel's layout (bulk.ts): a thread owns 16 channels (one code word) of a
// block of 32 rows, 8 threads a row, 16 blocks in flight a workgroup, 4 rows a round. vb-float: the
// kernels' way (each code unpacked to a float, a multiply-add a head). vb-dp4a: what a value layout
// of 4 tokens interleaved would allow (not the cache's layout today): word i of a thread's 4-row quad holds
// its channels 4i…4i+3 of the 4 tokens, one byte a token, so a shift and a mask put one channel of 4 tokens
// in byte lanes, and each head takes two packed dot products (DP4A) with the quad's weights as u16 split
// in bytes; per block the integer sums are scaled once (a block's weight step β).
const VB_DECLS = (int) =>
  range(NQ)
    .map(
      (j) =>
        `  var B${j} = 0.0;${int ? '' : ` var W${j} = 0.0;`}\n${range(16)
          .map((c) => `  var a${j}_${c} = 0.0;${int ? ` var H${j}_${c} = 0u; var L${j}_${c} = 0u;` : ''}`)
          .join('\n')}`,
    )
    .join('\n');
const VB_LOOP = (body, blockEnd = '', blockStart = '') => `  let k = li % 8u;
  let l = li / 8u;
  for (var bl = wid.x * 16u + l; bl < p.n / 32u; bl += nw.x * 16u) {
${blockStart}
    for (var r = 0u; r < 32u; r += 4u) {
      let t0 = bl * 32u + r;
${body}
    }
${blockEnd}  }`;
const VB_SUM = (int) =>
  range(NQ)
    .map(
      (j) =>
        `B${j}${int ? '' : ` + W${j}`} + ${range(16)
          .map((c) => `a${j}_${c}`)
          .join(' + ')}`,
    )
    .join(' + ');
// Token x of the round's weight for head j (any workgroup value: only the access pattern counts).
const vbWeight = (j, x) => `sc[${j * WG}u + (r + ${x}u) * 4u + (l & 3u)]`;
const vbFloat = VB_LOOP(
  `${range(4)
    .map((x) => `      let w${x} = a[(t0 + ${x}u) * 2u + k / 4u][k % 4u];\n      let sm${x} = unpack2x16float(m[(t0 + ${x}u) / 4u][${x}u]);`)
    .join('\n')}
${range(4)
  .map(
    (x) => `      {
${range(16)
  .map((c) => `        let m${c} = ${magic2(`w${x}`, c)};`)
  .join('\n')}
${range(NQ)
  .map(
    (j) => `        { let pj = ${vbWeight(j, x)}; let ws = pj * sm${x}.x; W${j} += ws; B${j} = fma(pj, sm${x}.y, B${j});
${range(16)
  .map((c) => `          a${j}_${c} = fma(ws, m${c}, a${j}_${c});`)
  .join('\n')}
        }`,
  )
  .join('\n')}
      }`,
  )
  .join('\n')}`,
);
// DP4A value sums: `transpose` reads the cache's layout (a word a token) and builds each byte of the
// interleaved words with pack4xU8 from the 4 tokens' words; `quant` makes the u16 weights as the kernel
// would have to (w = p·s, a block's step from its largest w, then each round's 4 weights rounded and split
// in bytes) instead of reading them ready-made.
const vbDp4aBody = ({ transpose = false, quant = false } = {}) =>
  VB_LOOP(
    `${
      transpose
        ? `${range(4)
            .map((x) => `      let w${x} = a[(t0 + ${x}u) * 2u + k / 4u][k % 4u];`)
            .join('\n')}
      let w = vec4<u32>(${range(4)
        .map(
          (b) =>
            `pack4xU8(vec4<u32>(${range(4)
              .map((x) => (b ? `w${x} >> ${8 * b}u` : `w${x}`))
              .join(', ')}))`,
        )
        .join(', ')});`
        : '      let w = a[(t0 / 4u) * 8u + k];'
    }
${range(4)
  .map((x) => `      let sm${x} = unpack2x16float(m[t0 / 4u][${x}u]);`)
  .join('\n')}
${range(NQ)
  .map(
    (j) => `${range(4)
      .map((x) => `      let p${j}_${x} = ${vbWeight(j, x)};\n      B${j} = fma(p${j}_${x}, sm${x}.y, B${j});`)
      .join('\n')}
${
  quant
    ? `      let nq${j} = vec4<u32>(fma(vec4<f32>(${range(4)
        .map((x) => `p${j}_${x} * sm${x}.x`)
        .join(', ')}), vec4<f32>(ib${j}), vec4<f32>(0.5)));
      let n${j} = vec2<u32>(pack4xU8(nq${j} >> vec4<u32>(8u)), pack4xU8(nq${j}));`
    : `      let n${j} = qw[${j * 16}u + (r / 4u + l) % 16u].xy;`
}`,
  )
  .join('\n')}
${range(16)
  .map(
    (c) => `      { let cc = ${c % 4 ? `(w[${c >> 2}] >> ${2 * (c % 4)}u)` : `w[${c >> 2}]`} & 0x03030303u;
${range(NQ)
  .map((j) => `        H${j}_${c} += dot4U8Packed(cc, n${j}.x); L${j}_${c} += dot4U8Packed(cc, n${j}.y);`)
  .join('\n')}
      }`,
  )
  .join('\n')}`,
    `${range(NQ)
      .map(
        (j) => `    { let beta = ${quant ? `be${j}` : `sc[${j * WG}u + l]`};
${range(16)
  .map((c) => `      a${j}_${c} = fma(beta, f32((H${j}_${c} << 8u) + L${j}_${c}), a${j}_${c}); H${j}_${c} = 0u; L${j}_${c} = 0u;`)
  .join('\n')}
    }\n`,
      )
      .join('')}`,
    quant
      ? range(NQ)
          .map(
            (j) => `    var be${j} = 0.0;
    var ib${j} = 0.0;
    {
      var mx = 0.0;
      for (var x = 0u; x < 32u; x++) { mx = max(mx, sc[${j * WG}u + x * 4u + (l & 3u)] * unpack2x16float(m[(bl * 32u + x) / 4u][x % 4u]).x); }
      be${j} = mx / 65535.0;
      ib${j} = select(0.0, 65535.0 / mx, mx > 0.0);
    }`,
          )
          .join('\n')
      : '',
  );
const rungs = {
  // 32-byte rows, one a thread: the loads alone.
  'k2-read': main(`  var x = vec4<u32>(0u);
  for (var t = g.x; t < p.n; t += stride) { x = x ^ a[t * 2u] ^ a[t * 2u + 1u]; }
  o[g.x] = f32(x.x ^ x.y ^ x.z ^ x.w);`),
  // + the codes unpacked and multiplied into NQ folded queries (the key phase's arithmetic).
  'k2-score': scoreRung(score2()),
  // The same scores with packed integer dot products (scoreDp4a), an int16 query or an int8 one.
  'k2-dp4a': scoreRung(scoreDp4a(false)),
  'k2-dp4a8': scoreRung(scoreDp4a(true)),
  // + the weights exp(s − m) per head.
  'k2-score-exp': main(`  var acc = 0.0;
  for (var t = g.x; t < p.n; t += stride) {
${score2()}
    acc += ${range(NQ)
      .map((j) => `exp(S${j} * 0.01 - 4.0)`)
      .join(' + ')};
  }
  o[g.x] = acc;`),
  // One tile of 128 rows at a time, the way attention.ts fuses the phases: each thread scores its row,
  // the tile's maximum per head through workgroup memory, the weights, then the value sums over the
  // tile's rows (the v2-acc layout); barriers between the phases (fused-nobar: none, wrong results,
  // the time without them).
  fused: main(fusedBody(true)),
  // + the query folded with each key group's scales (4 groups of 32 rows a tile, scales and minimums
  // loaded from memory), their sums, two barriers more: what KIVI keys add to a tile.
  'fused-fold': main(fusedBody(true, true)),
  'fused-nobar': main(fusedBody(false)),
  // The value sums alone, in the real kernel's layout (valueRow), rows in the order of the fused rung.
  'v2-acc': main(`  let cw = li % ${CHUNKS}u;
  let u = li / ${CHUNKS}u;
${valueDecls()}
  let wg0 = (g.x / ${WG}u) * ${WG}u;
  for (var t0 = wg0; t0 < p.n; t0 += stride) {
    for (var tt = u; tt < ${WG}u && t0 + tt < p.n; tt += ${LANES}u) {
      let t = t0 + tt;
${valueRow('t')}
    }
  }
  o[g.x] = ${valueSum()};`),
  // The value sums in the bulk kernel's layout, as the kernels do them and with DP4A on an interleaved layout.
  'vb-float': main(`${VB_DECLS(false)}\n${vbFloat}\n  o[g.x] = ${VB_SUM(false)};`),
  'vb-dp4a': main(`${VB_DECLS(true)}\n${vbDp4aBody()}\n  o[g.x] = ${VB_SUM(true)};`),
  // The same with the weights quantized in the kernel; and on the cache's own layout, transposed in registers.
  'vb-dp4a-q': main(`${VB_DECLS(true)}\n${vbDp4aBody({ quant: true })}\n  o[g.x] = ${VB_SUM(true)};`),
  'vb-dp4a-t': main(`${VB_DECLS(true)}\n${vbDp4aBody({ transpose: true })}\n  o[g.x] = ${VB_SUM(true)};`),
  'vb-dp4a-tq': main(`${VB_DECLS(true)}\n${vbDp4aBody({ transpose: true, quant: true })}\n  o[g.x] = ${VB_SUM(true)};`),
  // float16 rows (256 bytes), one a thread: the loads alone, then with the dot products (NQ heads).
  'f16-read': main(`  var x = vec4<u32>(0u);
  for (var t = g.x; t < p.n; t += stride) {
    for (var c = 0u; c < 16u; c++) { x = x ^ m[t * 16u + c]; }
  }
  o[g.x] = f32(x.x ^ x.y ^ x.z ^ x.w);`),
  'f16-score': main(`  var acc = 0.0;
  for (var t = g.x; t < p.n; t += stride) {
${range(NQ)
  .map((j) => `    var S${j} = 0.0;`)
  .join('\n')}
    for (var c = 0u; c < 16u; c += 4u) {
${range(4)
  .map((x) => `      let w${x} = m[t * 16u + c + ${x}u];`)
  .join('\n')}
${range(4)
  .map(
    (x) => `      {
        let k0 = vec4<f32>(unpack2x16float(w${x}.x), unpack2x16float(w${x}.y));
        let k1 = vec4<f32>(unpack2x16float(w${x}.z), unpack2x16float(w${x}.w));
${range(NQ)
  .map((j) => `        S${j} += dot(k0, big[${(j * D) / 4}u + (c + ${x}u) * 2u]) + dot(k1, big[${(j * D) / 4}u + (c + ${x}u) * 2u + 1u]);`)
  .join('\n')}
      }`,
  )
  .join('\n')}
    }
    acc += ${range(NQ)
      .map((j) => `S${j}`)
      .join(' + ')};
  }
  o[g.x] = acc;`),
};
const only = env.RUNGS ? env.RUNGS.split(',') : Object.keys(rungs);
// Codes: ROWS rows of 8 words; the second array: float16 rows (ROWS·64 words) where it fits a binding,
// else as many rows as fit (the f16 rungs then take that many rows).
const codes = b.tensor('f32', ROWS * 8);
const f16Rows = Math.min(ROWS, Math.floor(Math.min(b.maxBinding, 2 ** 31 - 16) / 256));
const halves = b.tensor('f32', f16Rows * 64);
const out = b.tensor('f32', GROUPS * WG);
b.fillRandom(codes, 1, 1);
b.fillRandom(halves, 2, 0.01);
const bind = [{ b: codes.g }, { b: halves.g }, { b: out.g }];
const median = (xs) => [...xs].sort((x, y) => x - y)[xs.length >> 1];
for (const name of only) {
  const k = core.kernel(`ladder-${name}`, rungs[name], ['read', 'read', 'rw']);
  const n = name.startsWith('f16') ? f16Rows : ROWS;
  const pass = () =>
    core.dispatch(k, bind, GROUPS, (u, _f, at) => {
      u[at] = n;
    });
  pass();
  await core.sync();
  const times = [];
  for (let r = 0; r < 7; r++) {
    const t0 = performance.now();
    for (let i = 0; i < 20; i++) pass();
    await core.sync();
    times.push((performance.now() - t0) / 20);
  }
  const ms = median(times);
  const bytes = name.startsWith('f16') ? n * 256 : /^v[2b]/.test(name) ? n * 36 : n * 32;
  const sum = (await b.read(out, 0, 4))[0];
  console.log(
    `${name.padEnd(13)} ${n} rows: ${(ms * 1000).toFixed(1)} µs, ${((ms * 1e6) / n).toFixed(4)} ns a row, ${(bytes / ms / 1e6).toFixed(0)} GB/s (out ${sum.toPrecision(3)})`,
  );
}
b.dispose();
