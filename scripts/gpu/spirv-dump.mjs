// The SPIR-V that Dawn's Tint makes of a kernel, for scripts/gpu/pipestats.c (what the GPU's driver makes of
// it: registers, spills). Runs here on SwiftShader (Tint's output does not depend on the adapter's driver,
// only on Dawn's toggles, which are the same for both):
//   node scripts/gpu/spirv-dump.mjs OUT.spv attend|bulk HEADS KV D [VARIANT]     (KIVI_WEBGPU_ROBUST=0: without index clamps)
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { attendWgsl, attnGeometry } from '../../dist/src/kernels/webgpu/attention.js';
import { parseAttnVariant } from '../../dist/src/kernels/webgpu/attn-variant.js';
import { bulkGeometry, bulkWgsl, parseBulkSetting } from '../../dist/src/kernels/webgpu/bulk.js';
import { nodeGpu } from '../../dist/src/kernels/webgpu/node.js';

const [out, kernel, H, KV, D, variant = ''] = process.argv.slice(2);
if (kernel !== 'attend' && kernel !== 'bulk') throw new Error('kernels: attend, bulk');
const shape = { numLayers: 1, numHeads: Number(H), numKvHeads: Number(KV), headDim: Number(D) };
// bulk's VARIANT: the code width, then a bulk setting (bulk.ts parseBulkSetting), e.g. 2,cw8 or 2,cw16,-values;
// a last part keys or values names one kernel of the split build (bulk.ts BulkPhase).
const wgsl = kernel === 'bulk' ? bulkCode() : attendCode();
function attendCode() {
  const v = parseAttnVariant(variant);
  return attendWgsl(shape, attnGeometry(shape, 32768, v), Math.max(1, v.na), v);
}
function bulkCode() {
  const [bits, ...rest] = variant.split(',');
  const phase = rest.at(-1) === 'keys' || rest.at(-1) === 'values' ? rest.pop() : 'all';
  const s = parseBulkSetting(rest.join(','));
  const cw = phase === 'values' && s.vcw ? s.vcw : s.cw;
  return bulkWgsl(shape, bulkGeometry(shape, Number(bits), 32768, cw, s.sb), 1, { ...s, split: !!s.split, sg: !!s.sg }, phase);
}
// Dawn prints the dump on the process's stdout (natively): a child compiles, the parent reads it.
if (!process.env.SPIRV_CHILD) {
  const text = execFileSync(process.execPath, process.argv.slice(1), { env: { ...process.env, SPIRV_CHILD: '1' }, maxBuffer: 1 << 30 }).toString();
  const i = text.indexOf('/* Dumped SPIRV disassembly */');
  if (i < 0) throw new Error('no SPIR-V dump in Dawn output');
  const asm = text.slice(i + 30).split('\ninfo:')[0];
  writeFileSync(`${out}.spvasm`, asm);
  execFileSync('spirv-as', ['--target-env', 'vulkan1.1spv1.4', '-o', out, `${out}.spvasm`]);
  console.log(`${out}: ${wgsl.length} chars of WGSL, ${asm.split('\n').length} lines of SPIR-V`);
  process.exit(0);
}
// The child: SwiftShader through the back end's own loader, Dawn also dumping shaders, one pipeline.
const gpu = await nodeGpu({ swiftshader: true, dawnFeatures: ['dump_shaders', 'disable_symbol_renaming'] });
const ad = await gpu.requestAdapter();
const dev = await ad.requestDevice({
  requiredLimits: { maxComputeWorkgroupStorageSize: 32768 },
  requiredFeatures: ad.features.has('subgroups') ? ['subgroups'] : [],
});
const m = dev.createShaderModule({ code: wgsl });
await dev.createComputePipelineAsync({ layout: 'auto', compute: { module: m, entryPoint: 'main' } });
await dev.queue.onSubmittedWorkDone();
