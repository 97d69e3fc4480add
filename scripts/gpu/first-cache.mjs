// On the GPU machine (after `npm run build` here and `source scripts/gpu/setup.sh` there):
//   node scripts/gpu/first-cache.mjs     (MODEL=llama-2-7b FILL=131072 GEN=33 KVS=fp16,fp16,fp16; an entry
//                                         spec:N fills that cache with N tokens)
// Why the first timed round of a `bench generate --fill` run decoded 21–29% slower than the rounds after it
// (docs/perf/webgpu-h200.md): one process fills a cache per entry of KVS in turn (synthetic keys and values,
// as `--fill` does), decodes GEN steps on it timing each, and frees it; printed per cache: the first steps
// (with the pipelines each compiled), the median step, and the bytes of cache arenas and of all GPU buffers alive after its fill.
import { KiviModel } from '../../dist/src/api.js';
import { filledCache, fillRows } from '../../dist/src/studies/bench/generate.js';

const env = process.env;
const m = await KiviModel.load(`models/configs/${env.MODEL ?? 'llama-2-7b'}`, { backend: 'webgpu', randomWeights: 1 });
const src = fillRows(m);
const GEN = Number(env.GEN ?? 33);
const FILL = Number(env.FILL ?? 131072);
// The names of the pipelines compiled, as they are compiled.
const core = m.backend.core;
const names = [];
const kernel = core.kernel.bind(core);
core.kernel = (name, ...rest) => {
  names.push(name);
  return kernel(name, ...rest);
};
const gib = (b) => `${(b / 2 ** 30).toFixed(2)} GiB`;
console.log(m.backend.description, env.MODEL ?? 'llama-2-7b', `fill ${FILL}, ${GEN} steps`);
// An entry is a spec, or spec:tokens to fill that cache with another length than FILL.
for (const [r, entry] of (env.KVS ?? 'fp16,fp16,fp16').split(',').entries()) {
  const [kv, n] = entry.split(':');
  const t0 = performance.now();
  const cache = await filledCache(m, kv, Number(n ?? FILL), src);
  const fillS = (performance.now() - t0) / 1000;
  const arenas = m.transformer.pool.bufferBytes;
  const live = core.liveBytes;
  const ms = [];
  // Pipelines compiled during each of the first steps, and the host seconds they blocked.
  const compiled = [];
  let id = 3;
  for (let g = 0; g < GEN; g++) {
    const [k0, s0, n0] = [core.compiled, core.compileSeconds, names.length];
    const t = performance.now();
    id = (await m.forward([{ tokens: [id], cache, logits: 'argmax', mode: 'decode' }]))[0];
    ms.push(performance.now() - t);
    if (g < 4) compiled.push(`${core.compiled - k0} in ${(core.compileSeconds - s0).toFixed(2)} s [${names.slice(n0).join(' ')}]`);
  }
  cache.free();
  const rest = ms.slice(4).sort((a, b) => a - b);
  console.log(
    `${r} ${entry}: fill ${fillS.toFixed(1)} s, arenas ${gib(arenas)}, buffers ${gib(live)}; steps 1-4 ${ms
      .slice(0, 4)
      .map((x) => x.toFixed(1))
      .join(' ')} ms (compiles: ${compiled.join(', ')}), median of the rest ${rest[rest.length >> 1].toFixed(2)} ms, steps 2-${GEN} ${ms
      .slice(1)
      .reduce((a, b) => a + b, 0)
      .toFixed(0)} ms in all (min ${rest[0].toFixed(2)}, max ${rest[rest.length - 1].toFixed(2)})`,
  );
}
m.backend.dispose();
