/** Options shared by several commands. */

import { availableParallelism } from 'node:os';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { type CacheSpec, DEFAULT_KV, parseKvSpec, splitSpecList } from '../cache/spec.js';
import { BACKENDS, type BackendChoice } from '../kernels/index.js';
import { WEIGHT_FORMATS, type WeightFormat } from '../model/weights.js';
import { int } from './parse.js';

export interface CommonOpts {
  model: string;
  kv: CacheSpec;
  backend?: BackendChoice;
  threads?: number;
  randomWeights?: number;
  weights?: WeightFormat;
}

/** What every command that loads a model passes to KiviModel.load. */
export interface LoadFlags {
  backend?: BackendChoice;
  threads?: number;
  randomWeights?: number;
  weights?: WeightFormat;
}

export function loadOptions(o: LoadFlags): LoadFlags {
  return { backend: o.backend, threads: o.threads, randomWeights: o.randomWeights, weights: o.weights };
}

/** --random-weights SEED: config.json's shapes with seeded random weights made on the back end (no checkpoint needed). */
export function randomWeightsOption(cmd: Command): Command {
  return cmd.option(
    '--random-weights <seed>',
    "seeded random weights of config.json's shapes, made on the back end (benchmarks at paper scale; text is meaningless)",
    int(0, 2 ** 32 - 1),
  );
}

/** --weights native|f32: keep the checkpoint's 16-bit matrices (default) or widen them to float32 at load. */
export function weightsOption(cmd: Command): Command {
  return cmd.addOption(
    new Option('--weights <how>', 'weight matrices as the checkpoint stores them (native: bf16/f16 stay 16-bit) or widened to f32')
      .choices([...WEIGHT_FORMATS])
      .default('native'),
  );
}

/** --weights f32,native: several ways of storing the weights, measured side by side. */
export function weightsListOption(cmd: Command, dflt: WeightFormat[]): Command {
  const parse = (s: string): WeightFormat[] => {
    const list = s.split(',').map((x) => x.trim());
    for (const w of list) {
      if (!(WEIGHT_FORMATS as readonly string[]).includes(w)) throw new InvalidArgumentError(`"${w}" is not one of ${WEIGHT_FORMATS.join(', ')}`);
    }
    if (new Set(list).size !== list.length) throw new InvalidArgumentError(`"${s}" names a format twice`);
    return list as WeightFormat[];
  };
  return cmd.addOption(
    new Option('--weights <list>', `weight storage, comma-separated, side by side (${WEIGHT_FORMATS.join(', ')})`)
      .argParser(parse)
      .default(dflt, dflt.join(',')),
  );
}

/** Specs are parsed here, at the edge, into the CacheSpec values everything else takes. */
function spec(s: string): CacheSpec {
  try {
    return parseKvSpec(s);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
}

export function kvOption(cmd: Command, dflt = DEFAULT_KV): Command {
  const o = new Option('--kv <spec>', 'KV cache: kivi2, kivi4, fp16, fp32, kivi:k=2,v=4,g=32,r=128[,residual=fp32], fake2-kC-vT, ...')
    .argParser(spec)
    .default(parseKvSpec(dflt), dflt);
  return cmd.addOption(o);
}

/** A list of specs separated by commas; key=value parts continue the general form before them. */
export function kvListOption(cmd: Command, dflt: string): Command {
  const parse = (s: string): CacheSpec[] => {
    try {
      return splitSpecList(s).map(parseKvSpec);
    } catch (e) {
      throw new InvalidArgumentError((e as Error).message);
    }
  };
  const o = new Option('--kv <specs>', 'cache specs, comma-separated (e.g. fp32,kivi2,kivi:k=2,v=4,g=32,r=128)').argParser(parse).default(parse(dflt), dflt);
  return cmd.addOption(o);
}

export function backendOption(cmd: Command): Command {
  return cmd.addOption(
    new Option('--backend <name>', 'compute back end (auto: webgpu on a hardware GPU, else wasm when it loads, else ts)')
      .choices([...BACKENDS])
      .default('auto'),
  );
}

/** --threads N: threads for the wasm back end (the ts back end is single-threaded). */
export function threadsOption(cmd: Command): Command {
  return cmd.option('--threads <n>', 'compute threads (wasm back end)', int(1, 256), availableParallelism());
}
