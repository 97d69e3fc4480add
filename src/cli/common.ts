/** Options shared by several commands. */
import { Option, type Command, InvalidArgumentError } from 'commander';
import { parseKvSpec, splitSpecList } from '../cache/spec.js';
import { BACKENDS, type BackendName } from '../kernels/index.js';

export interface CommonOpts {
  model: string;
  kv: string;
  backend?: BackendName;
}

function spec(s: string): string {
  try {
    parseKvSpec(s);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
  return s;
}

export function kvOption(cmd: Command, dflt = 'fp32'): Command {
  return cmd.option('--kv <spec>', 'KV cache: fp32, fp16, kivi2, kivi4, kivi:k=2,v=4,g=32,r=128[,residual=fp16], fake2-kC-vT, ...', spec, dflt);
}

/** A list of specs separated by commas; key=value parts continue the general form before them. */
export function kvListOption(cmd: Command, dflt: string): Command {
  const parse = (s: string): string[] => {
    try {
      return splitSpecList(s);
    } catch (e) {
      throw new InvalidArgumentError((e as Error).message);
    }
  };
  return cmd.option('--kv <specs>', 'cache specs, comma-separated (e.g. fp32,kivi2,kivi:k=2,v=4,g=32,r=128)', parse, splitSpecList(dflt));
}

export function backendOption(cmd: Command): Command {
  return cmd.addOption(new Option('--backend <name>', 'compute back end').choices([...BACKENDS]).default('auto'));
}
