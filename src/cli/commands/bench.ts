/** `kivi bench …`: performance benchmarks; each prints a Markdown table, or one JSON line with --json. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { type Command, InvalidArgumentError } from 'commander';
import { KiviModel } from '../../api.js';
import type { CacheSpec } from '../../cache/spec.js';
import { NAMED_SPECS } from '../../cache/spec.js';
import { type Backend, type BackendChoice, createBackend } from '../../kernels/index.js';
import type { WeightFormat } from '../../model/weights.js';
import { parseRedisUrl } from '../../server/redis-store.js';
import { type AttentionKernelResult, attentionChart, attentionKernelMarkdown, attentionMarkdown, runAttentionBench } from '../../studies/bench/attention.js';
import { type BudgetArg, capacityMarkdown, modelDims, runCapacity } from '../../studies/bench/capacity.js';
import { GEMV_WEIGHT_TYPES, type GemvWeightType, gemvMarkdown, runGemvBench } from '../../studies/bench/gemv.js';
import {
  benchPrompt,
  compileCounter,
  generateBenchMarkdown,
  PREFILL_ATTENTION,
  type PrefillAttention,
  runFilledDecodeBench,
  runGenerateBench,
} from '../../studies/bench/generate.js';
import { type GpuProfileResult, gpuProfileMarkdown, profiledBackend, runGpuProfile } from '../../studies/bench/gpu-profile.js';
import { kvBytesMarkdown, runKvBytes } from '../../studies/bench/kvbytes.js';
import { DEFAULT_REPEATS } from '../../studies/bench/measure.js';
import { prefixBenchMarkdown, runPrefixBench } from '../../studies/bench/prefix.js';
import { runThroughput, throughputChart, throughputMarkdown } from '../../studies/bench/throughput.js';
import { gpuThroughputChart, gpuThroughputMarkdown, runGpuThroughput } from '../../studies/bench/throughput-gpu.js';
import type { TopLevelSpec } from '../../studies/plot.js';
import { KiviError } from '../../util/errors.js';
import { backendOption, kvListOption, kvOption, loadOptions, randomWeightsOption, threadsOption, weightsListOption } from '../common.js';
import { bytes, int, intList, readTextFile } from '../parse.js';
import { LazyProgress } from '../progress.js';

/** KIVI-2 with the reference's float32 residual, beside the named `kivi2` (float16 residual, the paper's). */
const KIVI2_FP32_RESIDUAL = 'kivi:k=2,v=2,g=32,r=128,residual=fp32';

interface Shared {
  backend?: BackendChoice;
  threads?: number;
  randomWeights?: number;
  json?: boolean;
  save?: string;
}

/** "512MiB" (bytes) or "+16MiB" (headroom above the weights + measured overhead). */
function budgetArg(s: string): BudgetArg {
  const t = s.trim();
  return t.startsWith('+') ? { headroom: bytes(t.slice(1)) } : bytes(t);
}

function gemvWeightTypes(s: string): GemvWeightType[] {
  const list = s.split(',').map((x) => x.trim());
  for (const t of list) {
    if (!(GEMV_WEIGHT_TYPES as readonly string[]).includes(t)) throw new InvalidArgumentError(`"${t}" is not one of ${GEMV_WEIGHT_TYPES.join(', ')}`);
  }
  return list as GemvWeightType[];
}

function budgetList(s: string): BudgetArg[] {
  return s.split(',').map(budgetArg);
}

function sharedOptions(cmd: Command): Command {
  backendOption(cmd);
  threadsOption(cmd);
  return cmd
    .option('--json', 'print one JSON line instead of a Markdown table')
    .option('--save <base>', 'also write <base>.json and <base>.md (and <base>.svg where there is a chart)');
}

async function backendFor(o: Shared): Promise<Backend> {
  return createBackend({ backend: o.backend, threads: o.threads });
}

/** Print the JSON line or the Markdown; --save writes both to files; the chart goes to --svg and/or --save. */
async function report(o: Shared & { svg?: string }, json: unknown, markdown: string, chart?: TopLevelSpec): Promise<void> {
  process.stdout.write(o.json ? `${JSON.stringify(json)}\n` : markdown);
  const written: string[] = [];
  const write = async (file: string, what: () => Promise<unknown> | unknown) => {
    try {
      fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
      await what();
    } catch (e) {
      throw new KiviError(`cannot write ${file}: ${(e as Error).message}`);
    }
    written.push(file);
  };
  if (o.save) {
    await write(`${o.save}.json`, () => fs.writeFileSync(`${o.save}.json`, `${JSON.stringify(json)}\n`));
    await write(`${o.save}.md`, () => fs.writeFileSync(`${o.save}.md`, markdown));
  }
  if (chart && (o.svg || o.save)) {
    // Loaded only when a chart is asked for: vega costs every other command's start-up time.
    const { writeChart } = await import('../../studies/plot.js');
    for (const base of [o.svg?.replace(/\.svg$/i, ''), o.save]) {
      if (base) await write(`${base}.svg`, () => writeChart(chart, base, { png: false }));
    }
  }
  for (const f of written) process.stderr.write(`wrote ${path.resolve(f)}\n`);
}

export function register(program: Command): void {
  const bench = program.command('bench').description('performance benchmarks (Markdown table, or one JSON line with --json)');

  // --- attention ----------------------------------------------------------------------------------
  const att = bench
    .command('attention')
    .description('decode attention time per step for one layer of one sequence, and cache bytes, per spec and context')
    .option('--context <list>', 'context lengths', intList(1), [1024, 4096, 16384, 65536, 262144])
    .option('--heads <n>', 'query heads', int(1, 1024), 4)
    .option('--kv-heads <n>', 'key/value heads', int(1, 1024), 2)
    .option('--head-dim <n>', 'head dimension', int(1, 4096), 128)
    .option('--repeats <n>', 'timed steps at least (more until 0.5 s is timed, at most 50)', int(1, 10000), DEFAULT_REPEATS.minRepeats)
    .option('--warmup <n>', 'untimed steps first', int(0, 10000), DEFAULT_REPEATS.warmup)
    .option('--svg <file>', 'also write a chart (time and bytes per token vs context)');
  kvListOption(att, `fp32,fp16,kivi2,kivi4,${KIVI2_FP32_RESIDUAL}`);
  sharedOptions(att);
  att.action(
    async (
      o: Shared & { context: number[]; heads: number; kvHeads: number; headDim: number; repeats: number; warmup: number; kv: CacheSpec[]; svg?: string },
    ) => {
      const backend = await backendFor(o);
      try {
        const bar = new LazyProgress('bench attention');
        const repeats = { ...DEFAULT_REPEATS, minRepeats: o.repeats, warmup: o.warmup, maxRepeats: Math.max(o.repeats, DEFAULT_REPEATS.maxRepeats) };
        // On a GPU: the attention kernel alone too, beside a streaming read of the same GPU.
        const kernel = backend.name === 'webgpu' ? { results: [] as AttentionKernelResult[] } : undefined;
        const results = await runAttentionBench({
          contexts: o.context,
          specs: o.kv,
          heads: o.heads,
          kvHeads: o.kvHeads,
          headDim: o.headDim,
          backend,
          repeats,
          kernel,
          onProgress: (d, t) => bar.update(d, t),
        });
        bar.stop();
        const threads = backend.threads;
        let gpu: object | undefined;
        let markdown = attentionMarkdown(results);
        if (kernel) {
          const { streamingRead } = await import('../../kernels/webgpu/probe.js');
          const probe = await streamingRead(backend as import('../../kernels/webgpu/backend.js').WebGpuBackend);
          gpu = { device: backend.description, read_probe: probe, attention: kernel.results.map((r) => ({ ...r, of_probe: r.gbps / probe.gbps })) };
          markdown += attentionKernelMarkdown(kernel.results, probe);
        }
        await report(
          o,
          { backend: backend.name, threads, heads: o.heads, kv_heads: o.kvHeads, head_dim: o.headDim, results, ...(gpu ? { gpu } : {}) },
          markdown,
          attentionChart(results, `Decode attention, one layer (${o.heads} heads, ${o.kvHeads} kv heads, d=${o.headDim}), ${backend.description}`),
        );
      } finally {
        backend.dispose();
      }
    },
  );

  // --- capacity -----------------------------------------------------------------------------------
  const cap = bench
    .command('capacity')
    .description('sequences of N tokens that fit in a memory budget (weights + measured overhead + caches), and peak RSS when allocated')
    .requiredOption('--model <dir>', 'model directory')
    .requiredOption('--budget <bytes>', 'memory budget, e.g. 512MiB, or +64MiB: headroom above weights + measured overhead', budgetArg)
    .requiredOption('--context <n>', 'tokens per sequence (may exceed the model context: caches are filled with synthetic K/V)', int(1));
  kvListOption(cap, `fp16,kivi2,kivi4,${KIVI2_FP32_RESIDUAL}`);
  sharedOptions(cap);
  cap.action(async (o: Shared & { model: string; budget: BudgetArg; context: number; kv: CacheSpec[] }) => {
    const bar = new LazyProgress('bench capacity');
    const r = await runCapacity({
      model: o.model,
      budget: o.budget,
      context: o.context,
      specs: o.kv,
      backend: o.backend,
      threads: o.threads,
      onProgress: (d, t) => bar.update(d, t),
    });
    bar.stop();
    const { detail: _detail, model_context: _mc, base_rss: _base, ...json } = r;
    await report(o, json, capacityMarkdown(r));
  });

  // --- throughput ---------------------------------------------------------------------------------
  const thr = bench
    .command('throughput')
    .description(
      'generated tokens/s with the largest batch each spec admits under a memory budget (CPU: --budget on RSS; webgpu: --kv-budget on GPU cache pages)',
    )
    .requiredOption('--model <dir>', 'model directory (with --random-weights, config.json alone will do)')
    .option(
      '--budget <bytes>',
      'CPU back ends: memory budget(s), e.g. 512MiB or +16MiB (headroom above weights + measured overhead); comma-separated for a curve',
      budgetList,
    )
    .option('--kv-budget <bytes>', "webgpu: bytes of cache pages every batch must fit (e.g. 24GiB); batches swept up to each spec's largest", bytes)
    .option('--prompt <n>', 'prompt tokens per sequence', int(1), 160)
    .option('--gen <n>', 'generated tokens per sequence', int(1), 338)
    .option('--max-batch <n>', 'run at most this many sequences at once (time cap; capped points are marked)', int(1), 64)
    .option('--join <n>', "webgpu: prompts joining the batch per step (bounds a step's prefill rows)", int(1), 32)
    .option('--repeats <n>', 'runs per point, in rounds over all points (the median-time run is reported)', int(1, 100), 1)
    .option('--svg <file>', 'also write the throughput-vs-batch-size and -vs-budget chart');
  kvListOption(thr, `fp16,kivi2,${KIVI2_FP32_RESIDUAL}`);
  sharedOptions(thr);
  randomWeightsOption(thr);
  thr.action(
    async (
      o: Shared & {
        model: string;
        budget?: BudgetArg[];
        kvBudget?: number;
        prompt: number;
        gen: number;
        maxBatch: number;
        join: number;
        repeats: number;
        kv: CacheSpec[];
        svg?: string;
      },
    ) => {
      if (o.backend === 'webgpu') {
        if (o.kvBudget === undefined) throw new KiviError('bench throughput --backend webgpu needs --kv-budget (bytes of GPU cache pages)');
        const model = await KiviModel.load(o.model, loadOptions(o));
        try {
          const bar = new LazyProgress('bench throughput');
          const r = await runGpuThroughput({
            model,
            kvBudget: o.kvBudget,
            prompt: o.prompt,
            gen: o.gen,
            specs: o.kv,
            maxBatch: o.maxBatch,
            joinPerStep: o.join,
            onProgress: (d, t) => bar.update(d, t),
          });
          bar.stop();
          await report(
            o,
            { model: path.basename(path.resolve(o.model)), random_weights: o.randomWeights ?? null, ...r },
            gpuThroughputMarkdown(r),
            gpuThroughputChart(
              r,
              `Throughput on ${r.device.replace(/^webgpu: /, '')}, prompt ${o.prompt} + ${o.gen} generated (${path.basename(path.resolve(o.model))})`,
            ),
          );
        } finally {
          model.dispose();
        }
        return;
      }
      if (o.budget === undefined) throw new KiviError('bench throughput needs --budget (or, with --backend webgpu, --kv-budget)');
      if (o.randomWeights !== undefined)
        throw new KiviError('bench throughput --random-weights runs on --backend webgpu (the CPU study measures processes that load the checkpoint)');
      const bar = new LazyProgress('bench throughput');
      const r = await runThroughput({
        model: o.model,
        budgets: o.budget,
        prompt: o.prompt,
        gen: o.gen,
        specs: o.kv.map((k) => k.name),
        maxBatch: o.maxBatch,
        repeats: o.repeats,
        backend: o.backend,
        threads: o.threads,
        onProgress: (d, t) => bar.update(d, t),
      });
      bar.stop();
      await report(
        o,
        r,
        throughputMarkdown(r),
        throughputChart(r, `Throughput, prompt ${o.prompt} + ${o.gen} generated (${path.basename(path.resolve(o.model))})`),
      );
    },
  );

  // --- generate -----------------------------------------------------------------------------------
  const prefillAttentionList = (s: string): PrefillAttention[] => {
    const list = s.split(',').map((x) => x.trim());
    for (const m of list) {
      if (!(PREFILL_ATTENTION as readonly string[]).includes(m)) throw new InvalidArgumentError(`"${m}" is not one of ${PREFILL_ATTENTION.join(', ')}`);
    }
    if (new Set(list).size !== list.length) throw new InvalidArgumentError(`"${s}" names a way twice`);
    return list as PrefillAttention[];
  };
  const gen = bench
    .command('generate')
    .description('prefill and decode tokens/s of one sequence (what kivi generate reports), per spec, median of rounds')
    .requiredOption('--model <dir>', 'model directory')
    .option('--text <file>', 'prompt from the start of this text (default: seeded synthetic token ids)')
    .option('--prompt <n>', 'prompt tokens', int(1), 1024)
    .option('--gen <n>', 'generated tokens (greedy, through EOS)', int(1), 256)
    .option('--repeats <n>', 'rounds over all specs (the median is reported)', int(1, 100), 3)
    .option('--fill <n>', "decode only, after caches filled with n tokens of synthetic keys/values (long context without the prefill's cost)", int(1))
    .option(
      '--prefill-attention <list>',
      "wasm: the prompt's attention side by side, comma-separated: blocks (query rows in blocks, the default) and/or rows (one at a time)",
      prefillAttentionList,
    )
    .option(
      '--gpu-profile <batches>',
      'webgpu: then GPU time per decode step by kernel (timestamp queries), per spec, for each batch size in the comma list (--gen steps)',
      intList(1),
    );
  kvListOption(gen, 'fp32,fp16,kivi2,kivi4');
  weightsListOption(gen, ['f32', 'native']);
  sharedOptions(gen);
  randomWeightsOption(gen);
  gen.action(
    async (
      o: Shared & {
        model: string;
        text?: string;
        prompt: number;
        gen: number;
        repeats: number;
        fill?: number;
        kv: CacheSpec[];
        weights: WeightFormat[];
        randomWeights?: number;
        prefillAttention?: PrefillAttention[];
        gpuProfile?: number[];
      },
    ) => {
      if (o.fill !== undefined && o.gen < 2) throw new KiviError('--fill needs --gen 2 or more (the first step is untimed)');
      if (o.fill !== undefined && o.prefillAttention) throw new KiviError('--prefill-attention measures a prefill: not with --fill');
      const text = o.text === undefined ? undefined : readTextFile(o.text, '--text');
      // The model once per weight format, each on its own back end, measured in turns.
      const models: { weights: WeightFormat; model: KiviModel }[] = [];
      try {
        for (const weights of o.weights) models.push({ weights, model: await KiviModel.load(o.model, loadOptions({ ...o, weights })) });
        const model = models[0]!.model;
        if (o.gpuProfile) profiledBackend(model);
        const bar = new LazyProgress('bench generate');
        const specs = o.kv.map((k) => k.name);
        const onProgress = (d: number, t: number) => bar.update(d, t);
        const prompt = o.fill === undefined ? benchPrompt(model, o.prompt, text) : [];
        const results =
          o.fill !== undefined
            ? await runFilledDecodeBench({ models, context: o.fill, gen: o.gen, specs, repeats: o.repeats, onProgress })
            : await runGenerateBench({
                models,
                prompt,
                gen: o.gen,
                specs,
                repeats: o.repeats,
                prefillAttention: o.prefillAttention,
                onProgress,
              });
        bar.stop();
        const name = path.basename(path.resolve(o.model));
        const what = `kivi generate on ${name} (${model.backend.name}${model.backend.threads > 0 ? ` ×${model.backend.threads}` : ''})`;
        let md = generateBenchMarkdown(results, what);
        const counter = compileCounter(model);
        if (counter) {
          const { compiled, compileSeconds } = counter;
          md += `\nKernels compiled in this run (${models[0]!.weights} weights): ${compiled}, blocking the host ${compileSeconds.toFixed(2)} s in all.\n`;
        }
        let profile: GpuProfileResult[] | undefined;
        if (o.gpuProfile) {
          profile = await runGpuProfile(model, { prompt, fill: o.fill, steps: o.gen, specs, batches: o.gpuProfile });
          md += `\n${gpuProfileMarkdown(profile, model.backend.description.replace(/^webgpu: /, ''))}`;
        }
        await report(
          o,
          { model: name, backend: model.backend.name, threads: model.backend.threads, results, ...(profile ? { gpu_profile: profile } : {}) },
          md,
        );
      } finally {
        for (const m of models) m.model.dispose();
      }
    },
  );

  // --- serve ---------------------------------------------------------------------------------------
  const srv = bench
    .command('serve')
    .description('sequences the OpenAI server runs at once under one --kv-budget, per spec, from its own /metrics (same load for each)')
    .requiredOption('--model <dir>', 'model directory')
    .requiredOption('--text <file>', 'text the prompts are cut from (distinct consecutive slices)')
    .option('--prompt <n>', 'prompt tokens per request', int(2), 1920)
    .option('--gen <n>', 'max_tokens per request (greedy)', int(1), 16)
    .option('--clients <n>', 'concurrent clients, one request each', int(1, 4096), 16)
    .option('--fp16-seqs <n>', 'the budget, in fp16 requests (fp16 fills it exactly)', int(1), 3);
  kvListOption(srv, `fp16,kivi2,${KIVI2_FP32_RESIDUAL}`);
  sharedOptions(srv);
  randomWeightsOption(srv);
  srv.action(async (o: Shared & { model: string; text: string; prompt: number; gen: number; clients: number; fp16Seqs: number; kv: CacheSpec[] }) => {
    if (!o.kv.some((k) => k.name === 'fp16')) throw new KiviError('--kv must include fp16: the budget and the ratios are set by it');
    const text = readTextFile(o.text, '--text');
    // The server's modules load only for this bench.
    const { measureCapacity, serveCapacityMarkdown, textPrompts } = await import('../../studies/serve/capacity.js');
    const model = await KiviModel.load(o.model, loadOptions(o));
    try {
      if (o.prompt + o.gen > model.config.maxPositions) {
        throw new KiviError(`--prompt ${o.prompt} + --gen ${o.gen} exceed the model's context of ${model.config.maxPositions}`);
      }
      const prompts = textPrompts(model, text, o.clients, o.prompt);
      const opts = { prompt: o.prompt, gen: o.gen, clients: o.clients, fp16Seqs: o.fp16Seqs, specs: o.kv.map((k) => k.name) };
      const { budget, rows } = await measureCapacity(model, { ...opts, prompts });
      await report(o, { ...opts, budget, rows }, serveCapacityMarkdown(model, opts, budget, rows));
    } finally {
      model.dispose();
    }
  });

  // --- prefix -------------------------------------------------------------------------------------
  const pfx = bench
    .command('prefix')
    .description(
      'multi-turn chats over a shared system prompt against 1 and 2 kivi serve replicas, with and without the prefix cache: time to first token, prefill tokens, store bytes',
    )
    .requiredOption('--model <dir>', 'model directory')
    .requiredOption('--text <file>', 'text the system prompt and user messages are cut from')
    .option('--system <n>', 'shared system prompt tokens', int(2), 1500)
    .option('--conversations <n>', 'chats running at once', int(1, 256), 8)
    .option('--turns <n>', 'turns per chat', int(1, 64), 6)
    .option('--user <n>', 'tokens per user message', int(1), 40)
    .option('--gen <n>', 'tokens per answer (greedy)', int(1), 32)
    .option('--block <n>', 'prefix-cache block (kivi serve --prefix-block)', int(1), 256)
    .option('--replicas <list>', 'replica counts to run', intList(1), [1, 2])
    .option('--prefix-cache <size>', "each replica's in-process store", bytes, 512 * 1024 ** 2)
    .option('--prefix-store <url>', 'also run 2 replicas sharing this Redis (redis://HOST:PORT; entries are left to its eviction)');
  kvOption(pfx);
  sharedOptions(pfx);
  pfx.action(
    async (
      o: Shared & {
        model: string;
        text: string;
        system: number;
        conversations: number;
        turns: number;
        user: number;
        gen: number;
        block: number;
        replicas: number[];
        prefixCache: number;
        prefixStore?: string;
        kv: CacheSpec;
      },
    ) => {
      if (o.prefixStore !== undefined) parseRedisUrl(o.prefixStore);
      const text = readTextFile(o.text, '--text');
      const model = await KiviModel.load(o.model, loadOptions(o));
      try {
        const serveArgs = [...(o.backend ? ['--backend', o.backend] : []), ...(o.threads ? ['--threads', String(o.threads)] : [])];
        const bar = new LazyProgress('bench prefix');
        const r = await runPrefixBench({
          model,
          modelDir: o.model,
          text,
          kv: o.kv.name,
          system: o.system,
          conversations: o.conversations,
          turns: o.turns,
          user: o.user,
          gen: o.gen,
          block: o.block,
          replicas: o.replicas,
          cacheBytes: o.prefixCache,
          store: o.prefixStore,
          serveArgs,
          onProgress: (d, t) => bar.update(d, t),
        });
        bar.stop();
        await report(o, { model: path.basename(path.resolve(o.model)), ...r }, prefixBenchMarkdown(r));
      } finally {
        model.dispose();
      }
    },
  );

  // --- kv-bytes -----------------------------------------------------------------------------------
  const kvb = bench
    .command('kv-bytes')
    .description("one sequence's cache bytes (all layers) per spec and context for a model's shapes, vs fp16 and fp32")
    .requiredOption('--model <dir>', 'model directory (its config.json gives layers, kv heads, head_dim)')
    .option('--context <list>', 'context lengths (may exceed the model context: caches are filled with synthetic K/V)', intList(2), [4096, 32768]);
  // The default list holds the paper's presets and their fp32-residual twins; kivi2-hq is asked for by name.
  kvListOption(
    kvb,
    [
      ...NAMED_SPECS.filter((s) => s !== 'fp32' && s !== 'fp16' && s !== 'kivi2-hq'),
      KIVI2_FP32_RESIDUAL,
      'kivi:k=4,v=4,g=32,r=128,residual=fp32',
      'fp16',
      'fp32',
    ].join(','),
  );
  sharedOptions(kvb);
  kvb.action(async (o: Shared & { model: string; context: number[]; kv: CacheSpec[] }) => {
    const { dims } = await modelDims(o.model);
    const backend = await backendFor(o);
    try {
      const bar = new LazyProgress('bench kv-bytes');
      const results = await runKvBytes({ dims, contexts: o.context, specs: o.kv, backend, onProgress: (d, t) => bar.update(d, t) });
      bar.stop();
      await report(
        o,
        { model: path.basename(path.resolve(o.model)), layers: dims.numLayers, kv_heads: dims.numKvHeads, head_dim: dims.headDim, results },
        kvBytesMarkdown(results, dims),
      );
    } finally {
      backend.dispose();
    }
  });

  // --- gemv ---------------------------------------------------------------------------------------
  const gemv = bench
    .command('gemv')
    .description('linear-layer kernel GFLOP/s and GB/s against a measured memory-bandwidth bound')
    .option('--in <n>', 'input features', int(1), 4096)
    .option('--out <n>', 'output features', int(1), 8192)
    .option('--rows <list>', 'activation rows (1 = GEMV)', intList(1), [1, 4, 16])
    .option('--weights <list>', `weight storage types, side by side (${GEMV_WEIGHT_TYPES.join(', ')})`, gemvWeightTypes, [...GEMV_WEIGHT_TYPES])
    .option('--bandwidth-bytes <bytes>', 'buffer the bandwidth probe reads (≫ last-level cache)', bytes, 512 * 2 ** 20);
  sharedOptions(gemv);
  gemv.action(async (o: Shared & { in: number; out: number; rows: number[]; weights: GemvWeightType[]; bandwidthBytes: number }) => {
    const backend = await backendFor(o);
    try {
      const r = await runGemvBench({
        backend,
        inDim: o.in,
        outDim: o.out,
        rows: o.rows,
        weights: o.weights,
        threads: backend.threads,
        bandwidthBytes: o.bandwidthBytes,
      });
      await report(o, r, gemvMarkdown(r));
    } finally {
      backend.dispose();
    }
  });
}
