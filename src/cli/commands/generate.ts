/** `kivi generate`: stream a completion, or print one JSON line with --json. */
import type { Command } from 'commander';
import { KiviModel } from '../../api.js';
import { KiviError } from '../../util/errors.js';
import { backendOption, type CommonOpts, kvOption, loadOptions, randomWeightsOption, threadsOption, weightsOption } from '../common.js';
import { float, int, readJsonFile, tokenIdArray } from '../parse.js';

interface Opts extends CommonOpts {
  prompt?: string;
  promptIds?: string;
  maxTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  seed?: number;
  stop?: string[];
  ignoreEos?: boolean;
  json?: boolean;
}

export function register(program: Command): void {
  const cmd = program
    .command('generate')
    .description('generate text from a prompt')
    .requiredOption('--model <dir>', 'model directory (Hugging Face format)')
    .option('--prompt <text>', 'prompt text (BOS added as the tokenizer config says)')
    .option('--prompt-ids <file>', 'JSON array of prompt token ids, used as given')
    .option('--max-tokens <n>', 'most tokens to generate', int(1), 128)
    .option('--temperature <t>', 'sampling temperature (0 = greedy)', float(0, 100), 0)
    .option('--top-k <k>', 'sample from the k most likely tokens (0 = all)', int(0), 0)
    .option('--top-p <p>', 'nucleus sampling mass', float(0, 1, { minExclusive: true }), 1)
    .option('--seed <s>', 'random seed (reproducible sampling)', int(0, 2 ** 32 - 1))
    .option('--stop <text...>', 'stop when the text contains this string (repeatable)')
    .option('--ignore-eos', 'keep generating through end-of-sequence tokens')
    .option('--json', 'print one JSON line instead of streaming text');
  kvOption(cmd);
  backendOption(cmd);
  threadsOption(cmd);
  randomWeightsOption(cmd);
  weightsOption(cmd);
  cmd.action(async (o: Opts) => {
    if ((o.prompt === undefined) === (o.promptIds === undefined)) {
      throw new KiviError('give exactly one of --prompt TEXT or --prompt-ids FILE');
    }
    const m = await KiviModel.load(o.model, { kv: o.kv, ...loadOptions(o) });
    const ids = o.promptIds !== undefined ? tokenIdArray(readJsonFile(o.promptIds, '--prompt-ids'), o.promptIds) : m.encode(o.prompt!);
    const it = m.generate(ids, {
      maxTokens: o.maxTokens,
      temperature: o.temperature,
      topK: o.topK,
      topP: o.topP,
      seed: o.seed,
      stop: o.stop,
      ignoreEos: o.ignoreEos,
    });
    let r = await it.next();
    while (!r.done) {
      if (!o.json && r.value.text) process.stdout.write(r.value.text);
      r = await it.next();
    }
    const res = r.value;
    if (o.json) {
      process.stdout.write(
        `${JSON.stringify({
          ids: res.ids,
          text: res.text,
          prompt_tokens: res.promptTokens,
          kv: o.kv.name,
          kv_bytes: res.kvBytes,
          prefill_tokens_per_s: res.promptTokens / res.prefillSeconds,
          decode_tokens_per_s: res.decodeSteps > 0 ? res.decodeSteps / res.decodeSeconds : 0,
          finish_reason: res.finishReason,
        })}\n`,
      );
    } else {
      process.stdout.write('\n');
    }
  });
}
