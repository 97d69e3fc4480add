// On the GPU machine (after `npm run build` here and `source scripts/gpu/setup.sh` there):
//   node scripts/gpu/matmul-check.mjs          (ROWS=1,9,65 for fewer row counts)
// The GPU's matmul kernels (GEMV up to 512 rows by default, tiled GEMM past) against the one-thread-per-output
// kernel, which sums in the same canonical order: the same bits are required, at every row count the
// dispatch tells apart, float16 weights, Llama-2-7B's widths (4096 in; 11008 in, odd out). And the
// largest error against a float64 sum of the same float16 weights, relative to Σ|x·w|. Exit 1 on any
// difference. KIVI_WEBGPU_GEMV applies as everywhere; SMALL=1: one small shape (SwiftShader).
import { createBackend } from '../../dist/src/kernels/index.js';
import { fromHalfBits, toHalfBits } from '../../dist/src/quant/float16.js';

const b = await createBackend({ backend: 'webgpu', webgpu: { serialMatmul: false } });
console.log(b.description);
let seed = 7;
const rnd = () => {
  seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
  return seed / 2 ** 32 - 0.5;
};
let failed = 0;
for (const [inDim, outDim] of process.env.SMALL
  ? [[264, 37]]
  : [
      [4096, 1024],
      [11008, 333],
    ]) {
  const wBits = new Uint16Array(inDim * outDim);
  for (let i = 0; i < wBits.length; i++) wBits[i] = toHalfBits(rnd() * 0.05);
  const w = b.tensor('f16', wBits.length);
  b.write(w, wBits);
  const wf = Float64Array.from(wBits, fromHalfBits);
  for (const rows of (process.env.ROWS ?? '1,2,3,4,5,8,9,16,17,33,64,65,160,513').split(',').map(Number)) {
    const xd = Float32Array.from({ length: rows * inDim }, rnd);
    const x = b.tensor('f32', xd.length);
    b.write(x, xd);
    const out = b.tensor('f32', rows * outDim);
    const res = [];
    for (const serial of [false, true]) {
      b.serialMatmul = serial;
      b.matmul(out, x, w, rows, inDim, outDim);
      res.push(await b.read(out, 0, rows * outDim));
    }
    b.serialMatmul = false;
    let diff = 0;
    let worst = 0;
    for (let i = 0; i < res[0].length; i++) {
      if (res[0][i] !== res[1][i]) diff++;
      // Every 7th output against float64 (all of them would take the host minutes at 160 rows).
      if (i % 7 !== 0) continue;
      const r = Math.floor(i / outDim),
        o = i % outDim;
      let s = 0,
        a = 0;
      for (let k = 0; k < inDim; k++) {
        const p = xd[r * inDim + k] * wf[o * inDim + k];
        s += p;
        a += Math.abs(p);
      }
      worst = Math.max(worst, Math.abs(res[0][i] - s) / a);
    }
    if (diff > 0) failed++;
    console.log(
      `${rows} × ${inDim} → ${outDim}: ${diff === 0 ? 'same bits as serial' : `${diff} outputs differ from serial`}; largest error ${worst.toExponential(2)} of Σ|x·w|`,
    );
    b.release(x);
    b.release(out);
  }
  b.release(w);
}
b.dispose();
process.exit(failed > 0 ? 1 : 0);
