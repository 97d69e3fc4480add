/** `kivi analyze kv`: the paper's K/V observations measured on a model's real caches. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { KiviModel } from '../../api.js';
import type { BackendChoice } from '../../kernels/index.js';
import { analyzeKv, checkTokens } from '../../studies/analysis/kv.js';
import { channelMagnitudeChart, magnitudeHeatmap, quantErrorChart, spreadChart } from '../../studies/analysis/kv-plots.js';
import { kvJson, kvMarkdown, kvReading } from '../../studies/analysis/kv-report.js';
import { writeChart } from '../../studies/plot.js';
import { KiviError } from '../../util/errors.js';
import { backendOption, loadOptions, randomWeightsOption, threadsOption, weightsOption } from '../common.js';
import { float, int, readTextFile } from '../parse.js';
import { LazyProgress } from '../progress.js';

interface Opts {
  model: string;
  text: string;
  tokens: number;
  out: string;
  outlierRatio: number;
  groupSize: number;
  backend?: BackendChoice;
  threads?: number;
}

export function register(program: Command): void {
  const an = program.command('analyze').description("analyses of a model's real KV cache");
  const cmd = an
    .command('kv')
    .description('per-channel / per-token magnitude, outlier channels, and per-token vs per-channel quantization error of real K/V')
    .requiredOption('--model <dir>', 'model directory')
    .requiredOption('--text <file>', 'text to run the model over (its first N tokens)')
    .option('--tokens <n>', 'tokens to analyse, BOS included', int(2), 1024)
    .option('--out <dir>', 'where kv-analysis.json, kv-analysis.md and the plots go', 'out/kv-analysis')
    .option('--outlier-ratio <x>', 'a channel is an outlier above this multiple of the median channel magnitude', float(1, 1000), 3)
    .option('--group-size <g>', 'quantization group size G', int(1), 32);
  backendOption(cmd);
  threadsOption(cmd);
  randomWeightsOption(cmd);
  weightsOption(cmd);
  cmd.action(async (o: Opts) => {
    const text = readTextFile(o.text, '--text');
    const m = await KiviModel.load(o.model, loadOptions(o));
    checkTokens(o.tokens, m.config.maxPositions);
    if (m.config.headDim % o.groupSize !== 0) throw new KiviError(`--group-size ${o.groupSize} must divide head_dim ${m.config.headDim}`);
    const ids = m.encode(text).slice(0, o.tokens);
    if (ids.length < o.tokens) throw new KiviError(`${o.text} has only ${ids.length} tokens, fewer than --tokens ${o.tokens}`);
    const bar = new LazyProgress('analyze kv');
    const { analysis, captured } = await analyzeKv(m.transformer, ids, {
      groupSize: o.groupSize,
      outlierRatio: o.outlierRatio,
      bits: [2, 4],
      onProgress: (d, t) => bar.update(d, t),
    });
    bar.stop();
    fs.mkdirSync(o.out, { recursive: true });
    const files: string[] = [];
    const chart = async (spec: Parameters<typeof writeChart>[0], name: string) => files.push(...(await writeChart(spec, path.join(o.out, name))));
    for (let l = 0; l < captured.layers.length; l++) await chart(magnitudeHeatmap(captured, l), `kv-magnitude-layer${l}`);
    await chart(channelMagnitudeChart(analysis), 'kv-channel-magnitude');
    await chart(spreadChart(analysis), 'kv-channel-spread');
    await chart(quantErrorChart(analysis), 'kv-quant-error');
    const meta = { model: o.model, text: o.text };
    const jsonFile = path.join(o.out, 'kv-analysis.json');
    const mdFile = path.join(o.out, 'kv-analysis.md');
    fs.writeFileSync(jsonFile, `${JSON.stringify(kvJson(analysis, meta))}\n`);
    fs.writeFileSync(
      mdFile,
      kvMarkdown(
        analysis,
        meta,
        files.map((f) => path.basename(f)),
      ),
    );
    process.stdout.write(`${kvReading(analysis)}\n\nwrote ${[jsonFile, mdFile, ...files].join(', ')}\n`);
  });
}
