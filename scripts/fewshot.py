"""Zero-shot and in-context few-shot prompting (no parameter updates): accuracy of label-word scores.

    python scripts/fewshot.py --mode zero_shot --task sst2 --model smollm2
    python scripts/fewshot.py --mode in_context --task sst2 --kshot 16-42 --model smollm2
    python scripts/fewshot.py --mode generate --task sst2 --model smollm2      # or a local T5 folder

zero_shot: each evaluation example is written into the pattern's template and the label whose word scores
highest wins (`ftlab.train.prompting`; cloze for encoders, causal for decoders, seq2seq for T5 with
`--slot-text`, `ftlab.prompts.seq2seq`). generate (causal LMs and T5): the model generates greedily after the
prompt and the text is read back through the verbalizer (exact match after strip/lower; a generation matching
no word counts as wrong and is reported as `unmatched`; `ftlab.train.generation_eval`). in_context (causal LMs): the
K-shot train examples of `--kshot`, each filled with its label word, in an order drawn with `--order-seed`,
separated by newlines, form a prefix before every evaluation example (GPT-3 style); demonstrations are dropped
from the end until the prefix plus `--max-length` tokens fit `--max-context`. The prefix is run once into a KV
cache. The evaluation set is the task's original one (`ftlab.tasks.kshot.TEST_SPLIT`, e.g. SST-2's 872-sentence
dev set). Prints a JSON line with accuracy, counts and timings; `--out` also writes it; `--scores-out F.npz`
saves every example's label scores [N, C] and gold labels.

--calibrate (zero_shot, in_context): contextual calibration (Zhao et al. 2021, `prompting.calibrate`). The
content-free inputs ('N/A', '', '[MASK]' by default) fill every text field of the template and are scored
exactly like the evaluation examples (same template, same demonstrations' prefix); the label probabilities are
divided by their mean over them. The result gains `calibrated`: accuracy, predictions and p_cf.

    python scripts/fewshot.py --mode in_context --task sst2 --kshot 16-42 --model smollm2 --calibrate
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("zero_shot", "in_context", "generate"), required=True)
    p.add_argument("--task", default="sst2")
    p.add_argument("--kshot", default="16-42", help="K-shot split whose train examples are the demonstrations")
    p.add_argument("--kshot-dir", default="")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--data-dir", default="")
    p.add_argument("--pattern", default="0", help="'<i>' or '<task>:<i>' (ftlab/prompts/patterns.py)")
    p.add_argument("--template", default="")
    p.add_argument("--verbalizer", default="")
    p.add_argument("--scorer", default="auto")
    p.add_argument("--no-suffix", action="store_true",
                   help="causal: score only the label word, not the text after; seq2seq: not the eos after it")
    p.add_argument("--slot-text", default="", help="T5: what the encoder reads in the {mask} slot ('' = drop it; "
                   "'<extra_id_0>' for T5's span-corruption form)")
    p.add_argument("--max-new-tokens", type=int, default=0,
                   help="generate: tokens to generate (0 = the longest label word's tokens + 1)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per evaluation example")
    p.add_argument("--max-context", type=int, default=2048, help="in_context: prefix + example tokens")
    p.add_argument("--order-seed", type=int, default=0)
    p.add_argument("--calibrate", action="store_true",
                   help="also report contextual calibration (Zhao et al. 2021): label probabilities divided by "
                        "those of content-free inputs scored with the same prompt and demonstrations")
    p.add_argument("--content-free", default="N/A||[MASK]",
                   help="'|'-separated content-free texts for --calibrate (default: 'N/A||[MASK]', the paper's)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N examples only (0 = all)")
    p.add_argument("--out", default="")
    p.add_argument("--scores-out", default="", help="write the label scores [N, C] and labels to this .npz")
    p.add_argument("--progress", type=int, default=10, help="print progress every N batches (0 = never)")
    a = p.parse_args(argv)

    import jax
    import numpy as np

    from ftlab.checkpoint import load_base
    from ftlab.data.batching import batches
    from ftlab.models import build_model, family, init_params
    from ftlab.prompts import encode_prompts
    from ftlab.prompts.encode import demonstrations
    from ftlab.prompts.seq2seq import encode_seq2seq
    from ftlab.prompts.template import template_fields
    from ftlab.tasks import get_task, kshot, resolve_data_dir
    from ftlab.train import prompting
    from ftlab.train.generation_eval import generate_and_map

    t0 = time.time()
    task = get_task(a.task)
    data_dir = resolve_data_dir(task.name, a.data_dir or None)
    base = load_base(a.model)
    prompt = prompting.resolve({"pattern": a.pattern, "template": a.template, "verbalizer": a.verbalizer,
                                "scorer": a.scorer, "score_suffix": not a.no_suffix}, task, family(base.config))
    if a.mode == "in_context" and prompt["scorer"] != "causal":
        raise SystemExit("in_context needs a causal LM (the cloze and seq2seq scorers have no shared prefix)")
    if a.mode == "generate" and a.calibrate:
        raise SystemExit("--calibrate needs label scores (zero_shot or in_context), not generated text")
    if a.mode == "generate" and prompt["scorer"] == "cloze":
        raise SystemExit("generate needs a causal LM or T5 (a masked LM does not generate)")
    model = build_model(base.config, prompt["head"])
    params, fresh = init_params(model, jax.random.key(0), base.params, np.zeros((1, 4), np.int32))
    if fresh:
        print(f"[fewshot] WARNING: {len(fresh)} head parameters are freshly initialised (no pretrained LM head): "
              f"{fresh[:3]} ...; zero-shot scores are then meaningless", file=sys.stderr)
    variables = {"params": params}
    tok = base.tokenizer
    examples = kshot.read(task, "test", data_dir, a.kshot)
    if a.limit:
        examples = examples[: a.limit]
    common = {"mode": a.mode, "task": task.name, "model": a.model, "template": prompt["template"],
              "verbalizer": prompt["verbalizer"], "eval_split": kshot.TEST_SPLIT.get(task.name)}
    if a.mode == "generate":
        t_load, t = time.time() - t0, time.time()
        res = generate_and_map(model, variables, examples, tok, prompt["template"], prompt["verbalizer"],
                               task.label_names, a.max_length, a.max_new_tokens or None, a.batch_size, a.slot_text)
        result = {**common, "slot_text": a.slot_text, "n": res["n"], "accuracy": res["accuracy"],
                  "unmatched": res["unmatched"], "predicted": res["predicted"],
                  "unmatched_examples": res["unmatched_examples"], "max_new_tokens": res["max_new_tokens"],
                  "load_seconds": round(t_load, 1), "generate_seconds": round(time.time() - t, 1),
                  "device": jax.devices()[0].device_kind}
        return _emit(result, a.out)
    def encode(exs):
        if prompt["scorer"] == "seq2seq":
            c = base.config
            return encode_seq2seq(exs, tok, prompt["template"], prompt["verbalizer"], task.label_names,
                                  a.max_length, c.decoder_start_token_id, c.eos_token_id, prompt["score_suffix"],
                                  a.slot_text)
        return encode_prompts(exs, tok, prompt["template"], prompt["verbalizer"], task.label_names, a.max_length,
                              prompt["scorer"], prompt["score_suffix"])

    enc = encode(examples)
    t_load = time.time() - t0

    info: dict = {}
    cache = None
    if a.mode == "in_context":
        demos = kshot.read(task, "train", data_dir, a.kshot, a.kshot_dir)
        room = enc.max_length  # batches are padded up to max_length at most
        prefix, kept = demonstrations(demos, tok, prompt["template"], prompt["verbalizer"], task.label_names,
                                      a.order_seed, a.max_context - room)
        info = {"demonstrations": kept, "of": len(demos), "prefix_tokens": len(prefix)}
        t = time.time()
        cache = prompting.prefill(model, variables, np.asarray(prefix[:-1], np.int32), len(prefix) - 1 + room)
        jax.block_until_ready(cache)
        info["prefill_seconds"] = round(time.time() - t, 2)

    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def score_all(e, progress: bool) -> np.ndarray:
        """Label scores [N, C] of encoded prompts `e`, with the demonstrations' prefix when there is one."""
        out, t = [], time.time()
        for b in batches(e, a.batch_size, shuffle=False, seed=0, epoch=0, pad_id=pad, pad_to_multiple_of=16,
                         drop_remainder=False, pad_final=True):
            if cache is None:
                z = prompting.score_batch(model, variables, b, task.num_labels)
            else:
                z = prompting.score_with_prefix(model, variables, cache, len(prefix) - 1, prefix[-1], b,
                                                task.num_labels)
            out.extend(z[b["example_mask"] > 0])
            if progress and a.progress and len(out) < len(e) and len(out) % (a.progress * a.batch_size) == 0:
                right = sum(int(np.argmax(q) == y) for q, y in zip(out, e.labels, strict=False))
                print(f"[fewshot] {len(out)}/{len(e)} examples, accuracy so far {right / len(out):.4f}, "
                      f"{time.time() - t:.0f} s", file=sys.stderr, flush=True)
        return np.stack(out)

    t_score = time.time()
    scores = score_all(enc, progress=True)
    t_score = time.time() - t_score
    labels = enc.labels.tolist()
    preds = np.argmax(scores, -1).tolist()
    acc = float(np.mean([p == y for p, y in zip(preds, labels, strict=True)]))
    if a.scores_out:
        np.savez(a.scores_out, scores=scores, labels=np.asarray(labels))
    if a.calibrate:
        texts = tuple(a.content_free.split("|"))
        cf = score_all(encode(prompting.content_free_examples(template_fields(prompt["template"]), texts)), False)
        cal, p_cf = prompting.calibrate(scores, cf)
        cpred = np.argmax(cal, -1).tolist()
        info["calibrated"] = {
            "content_free": list(texts), "p_cf": [round(float(x), 6) for x in p_cf],
            "accuracy": float(np.mean([p == y for p, y in zip(cpred, labels, strict=True)])),
            "predicted": {task.label_names[c]: cpred.count(c) for c in range(task.num_labels)}}
    result = {"mode": a.mode, "task": task.name, "model": a.model, "kshot": a.kshot if a.mode == "in_context"
              else None, "template": prompt["template"], "verbalizer": prompt["verbalizer"],
              "scorer": prompt["scorer"], "score_suffix": prompt["score_suffix"], "order_seed": a.order_seed,
              "eval_split": kshot.TEST_SPLIT.get(task.name), "n": len(labels), "accuracy": acc,
              "predicted": {task.label_names[c]: preds.count(c) for c in range(task.num_labels)},
              **info, "load_seconds": round(t_load, 1), "score_seconds": round(t_score, 1),
              "device": jax.devices()[0].device_kind}
    return _emit(result, a.out)


def _emit(result: dict, out: str) -> dict:
    print(json.dumps(result))
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
