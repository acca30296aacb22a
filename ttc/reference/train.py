"""Train the reference policy and process-reward model from scratch on the CPU.

    python -m ttc.reference.train                        # both models
    python -m ttc.reference.train --only policy --policy-phases 2   # phase 2 on the shipped policy
    python -m ttc.reference.train --only prm             # retrain the PRM on the shipped policy

Deterministic for a seed (fixed step counts, seeded data streams, one thread
order). The policy trains in two phases: the task mixture, then the same with
the code task's constants widened. The PRM is built from the policy (it reads
the policy's own surprise at each character; ``ttc.reference.prm``) and its two
learned pieces are fitted on the policy's sampled solutions, each step labelled
by exact checking (Math-Shepherd style judgement tokens).
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ttc.reference import POLICY_PATH, PRM_PATH, prm
from ttc.reference.evaluate import auroc
from ttc.reference.tokenizer import save_tokenizer
from ttc.tasks import arith, synth_code

MODEL_SHAPE = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,  # trained on <= 256; room for long prompts (HumanEval) at run time
)
TRAIN_STEPS = range(1, 7)  # arithmetic chain lengths seen in training


PHASE1_CODE_CONST = 9


def policy_example(rng: random.Random, code_consts: tuple[int, ...] = ()) -> tuple[str, str]:
    """One (prompt, completion) pair from the policy's training mixture.

    ``code_consts``: the code task's constant ranges (``max_const``) to draw from;
    empty means phase 1's single range, drawn without touching ``rng`` so that
    phase 1's data stream is the one the shipped checkpoint was trained on."""
    r = rng.random()
    if r < 0.30:
        max_const = rng.choice(code_consts) if code_consts else PHASE1_CODE_CONST
        p = synth_code.generate(1, seed=rng.getrandbits(48), max_const=max_const)[0]
        return p.prompt(), p.solution()
    prob = arith.sample_problem(rng, steps=rng.choice(TRAIN_STEPS))
    direct = r < 0.50
    return prob.prompt(direct), prob.solution(direct)


def new_model(tok: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
        torch_dtype="float32",
        **MODEL_SHAPE,
    )
    return LlamaForCausalLM(cfg)


def collate(
    tok: PreTrainedTokenizerFast, pairs: list[tuple[str, str]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask, and labels that score the completion only."""
    seqs, labels = [], []
    for prompt, completion in pairs:
        p = tok(prompt).input_ids
        c = [*tok(completion, add_special_tokens=False).input_ids, tok.eos_token_id]
        seqs.append(p + c)
        labels.append([-100] * len(p) + c)
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    lab = torch.full((len(seqs), width), -100)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (seq, lbl) in enumerate(zip(seqs, labels, strict=True)):
        ids[i, : len(seq)] = torch.tensor(seq)
        lab[i, : len(lbl)] = torch.tensor(lbl)
        mask[i, : len(seq)] = 1
    return ids, mask, lab


def fit(
    model: LlamaForCausalLM,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    steps: int,
    lr: float,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    desc: str,
) -> None:
    """AdamW with linear warm-up and cosine decay over the trainable parameters;
    labels are next-token targets."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    model.train()
    bar = tqdm(range(steps), desc=desc)
    ema = None
    for _ in bar:
        ids, mask, lab = next(batches)
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = loss_fn(logits[:, :-1], lab[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{ema:.4f}")
    model.eval()


def token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def save(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    ).save_pretrained(str(path))
    tok.save_pretrained(str(path))


# Phase 2 widens the code task's constants: with f(1), f(2), f(3) of functions
# whose constants reach 29 the program must be worked out, not recalled, so
# samples disagree and checking them against the visible examples pays.
PHASE2_CODE_CONSTS = (9, 19, 29)


def train_policy(path: Path, seed: int, steps: int, phase2_steps: int, batch: int, phases: list[int]) -> None:
    """Phase 1 from scratch; phase 2 continues the phase-1 checkpoint at ``path``."""
    if 1 in phases:
        tok = save_tokenizer(path)
        model = new_model(tok, seed)
        batches = _policy_batches(tok, random.Random(f"policy-data:{seed}"), batch, ())
        fit(model, batches, steps, lr=3e-3, loss_fn=token_ce, desc="policy")
        save(model, tok, path)
    if 2 in phases:
        tok = PreTrainedTokenizerFast.from_pretrained(str(path))
        model = LlamaForCausalLM.from_pretrained(str(path))
        batches = _policy_batches(tok, random.Random(f"policy-data-2:{seed}"), batch, PHASE2_CODE_CONSTS)
        fit(model, batches, phase2_steps, lr=1e-3, loss_fn=token_ce, desc="policy phase 2")
        save(model, tok, path)


def _policy_batches(
    tok: PreTrainedTokenizerFast, rng: random.Random, batch: int, code_consts: tuple[int, ...]
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    while True:
        yield collate(tok, [policy_example(rng, code_consts) for _ in range(batch)])


# ----------------------------------------------------------------------------- PRM

PRMRow = tuple[str, str, list[tuple[int, bool]]]  # prompt, completion, judgements (char index, right so far)


def sample_policy_solutions(policy: Path, seed: int, n_problems: int, samples: int) -> list[PRMRow]:
    """Sample the policy on fresh problems and label its text by exact checking.

    Returns (prompt, completion, judgements): a judgement (i, ok) says whether
    the completion is still right after its character i. Arithmetic is judged
    after every step's newline (``judgement_marks``); code once, after the
    program line, by the hidden tests.
    """
    from vllm import SamplingParams

    from ttc.backends.vllm import build_llm

    rng = random.Random(f"prm-data:{seed}")
    items: list[tuple[str, object]] = []
    for i in range(n_problems):
        if i % 5 == 4:
            p = synth_code.generate(1, seed=rng.getrandbits(48))[0]
            items.append((p.prompt(), p))
        else:
            a = arith.sample_problem(rng, steps=rng.choice(range(2, 8)))
            items.append((a.prompt(), a))
    llm = build_llm(str(policy), seed=seed)
    params = SamplingParams(n=samples, temperature=1.0, max_tokens=160, seed=seed)
    outs = llm.generate([p for p, _ in items], params, use_tqdm=True)
    data = []
    for (prompt, prob), out in zip(items, outs, strict=True):
        for c in out.outputs:
            if isinstance(prob, arith.ArithProblem):
                data.append((prompt, c.text, judgement_marks(prob, c.text)))
            else:
                program = synth_code.extract_program(c.text)
                text = program + arith.STEP_DELIMITER
                data.append((prompt, text, [(len(text) - 1, synth_code.passes(program, prob.hidden))]))
    return data


def judgement_marks(prob: arith.ArithProblem, text: str) -> list[tuple[int, bool]]:
    """The judgement after every newline of an arithmetic chain: is the text still
    a prefix of the reference chain? That is the step's Math-Shepherd label
    (right so far), at the character where the PRM is read."""
    ref = prob.solution()
    return [(j, text[: j + 1] == ref[: j + 1]) for j, c in enumerate(text) if c == arith.STEP_DELIMITER]


def build_prm(policy_path: Path, path: Path, seed: int, n_problems: int, cache: Path | None = None) -> None:
    """Build the PRM from the policy (``ttc.reference.prm``) and fit its two learned
    pieces on the policy's own samples: the logsumexp MLP and the calibration.
    One problem in eight is held out; its step AUROC is printed."""
    if cache is not None and cache.exists():
        data = [(p, t, [tuple(m) for m in marks]) for p, t, marks in json.loads(cache.read_text())]
    else:
        data = sample_policy_solutions(policy_path, seed, n_problems, samples=4)
        if cache is not None:
            cache.write_text(json.dumps(data))
    prompts = sorted({p for p, _, _ in data})
    random.Random(f"prm-split:{seed}").shuffle(prompts)
    held = set(prompts[: len(prompts) // 8])
    train = [row for row in data if row[0] not in held]
    test = [row for row in data if row[0] in held and row[0].startswith("Q:")]
    tok = PreTrainedTokenizerFast.from_pretrained(str(policy_path))
    policy = LlamaForCausalLM.from_pretrained(str(policy_path)).eval()
    print(f"PRM data: {len(train)} policy solutions ({len(test)} arithmetic ones held out)")
    logits = prm.judged_logits(policy, tok, [(p, t) for p, t, _ in train])
    lse = prm.fit_logsumexp(logits, seed=seed)
    model = prm.build(policy, tok, lse)
    scores, labels = _judgements(model, tok, train)
    a, b = prm.calibrate(scores, labels)
    prm.set_calibration(model, tok, a, b)
    print(f"PRM calibration: P(good) = sigmoid({a:.3f} * softmin log p + {b:.3f}); "
          f"held-out step AUROC {auroc(*_judgements(model, tok, test)):.3f}")
    save(model, tok, path)


def _judgements(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, rows: list[PRMRow], batch: int = 64
                ) -> tuple[list[float], list[bool]]:
    """The PRM's <good> - <bad> logit margin at each judged character, and its label."""
    scores, labels = [], []
    for i in tqdm(range(0, len(rows), batch), desc="PRM judgements"):
        chunk = rows[i : i + batch]
        margin = prm.margin(model, tok, [p + t for p, t, _ in chunk])
        for row, (prompt, _, marks) in zip(margin, chunk, strict=True):
            head = len(tok(prompt).input_ids)
            scores += [row[head + j].item() for j, _ in marks]
            labels += [ok for _, ok in marks]
    return scores, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["policy", "prm"], help="train one model (default: both)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policy-steps", type=int, default=2000)
    ap.add_argument("--policy-phase2-steps", type=int, default=800)
    ap.add_argument("--policy-phases", type=int, nargs="+", default=[1, 2], choices=[1, 2],
                    help="2 alone continues the checkpoint at --policy-out")
    ap.add_argument("--prm-data-cache", type=Path, default=None, help="reuse sampled PRM data (JSON)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prm-problems", type=int, default=1000, help="problems sampled (4 times each) for the PRM")
    ap.add_argument("--policy-out", type=Path, default=POLICY_PATH)
    ap.add_argument("--prm-out", type=Path, default=PRM_PATH)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.only in (None, "policy"):
        train_policy(
            args.policy_out, args.seed, args.policy_steps, args.policy_phase2_steps, args.batch, args.policy_phases
        )
    if args.only in (None, "prm"):
        build_prm(args.policy_out, args.prm_out, args.seed, args.prm_problems, args.prm_data_cache)


if __name__ == "__main__":
    main()
