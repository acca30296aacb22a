"""Train the reference policy and process-reward model from scratch on the CPU.

    python -m ttc.reference.train                        # both models
    python -m ttc.reference.train --only policy --policy-phases 2   # phase 2 on the shipped policy
    python -m ttc.reference.train --only prm             # retrain the PRM on the shipped policy

Deterministic for a seed (fixed step counts, seeded data streams, one thread
order). The policy trains in two phases: the task mixture, then the same with
the code task's constants widened. The PRM is the frozen policy plus two fresh
layers, trained on the policy's own sampled solutions, each character labelled
by exact checking (Math-Shepherd style judgement tokens), and on chains with a
synthetic slip.
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

from ttc.reference import POLICY_PATH, PRM_PATH
from ttc.reference.tokenizer import BAD, GOOD, save_tokenizer
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
    every: tuple[int, Callable[[], str]] | None = None,
) -> None:
    """AdamW with linear warm-up and cosine decay over the trainable parameters;
    labels are next-token targets. ``every=(k, report)`` prints report() every k steps."""
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
    for step in bar:
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
        if every and (step + 1) % every[0] == 0:
            bar.write(f"{desc} step {step + 1}: loss {ema:.4f}, {every[1]()}")
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
    after every character (right while the text is a prefix of the reference
    chain), so a step's label after its newline is exactly its Math-Shepherd
    label, and the dense labels teach the PRM *where* a chain goes wrong. Code
    is judged once, after the program line, by the hidden tests.
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
    """The PRM's training judgement after every character of an arithmetic chain:
    is the text still a prefix of the reference chain? After a step's newline
    this is exactly the step's Math-Shepherd label (right so far); the labels in
    between teach the PRM *where* a chain goes wrong. (Labelling characters
    locally instead, right given the lines written before, separated steps no
    better: held-out AUROC 0.735 against 0.745 after 500 steps.)"""
    ref = prob.solution()
    return [(j, text[: j + 1] == ref[: j + 1]) for j in range(len(text))]


def prm_collate(
    tok: PreTrainedTokenizerFast, rows: list[PRMRow]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Judgement targets after the judged characters; nothing else is scored.

    ``fit`` compares the logits at position t with the label at t+1, so the
    judgement after the token at t is stored at t+1."""
    good, bad = tok.convert_tokens_to_ids([GOOD, BAD])
    seqs, judged = [], []
    for prompt, text, marks in rows:
        head = tok(prompt).input_ids
        ids = head + tok(text, add_special_tokens=False).input_ids  # one token per character
        seqs.append(ids)
        judged.append([(len(head) + j, good if ok else bad) for j, ok in marks])
    width = max(map(len, seqs)) + 1
    ids_t = torch.full((len(seqs), width), tok.pad_token_id)
    lab_t = torch.full((len(seqs), width), -100)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, (ids, marks) in enumerate(zip(seqs, judged, strict=True)):
        ids_t[r, : len(ids)] = torch.tensor(ids)
        mask[r, : len(ids)] = 1
        for t, y in marks:
            lab_t[r, t + 1] = y
    return ids_t, mask, lab_t


def slipped_solution(rng: random.Random) -> PRMRow:
    """A reference chain, or one with a single slip of the kind the policy makes.

    The slip (a wrong digit, an off-by-one or -ten, a miscopied previous result)
    is continued *correctly* from the wrong value, as the policy does, so every
    later step is locally right and still labelled bad: the PRM must carry an
    error forward, not just check the last line. Labels are dense, as in
    ``sample_policy_solutions``."""
    prob = arith.sample_problem(rng, steps=rng.choice(range(2, 8)))
    ref = prob.solution()
    if rng.random() < 0.35:
        return prob.prompt(), ref, judgement_marks(prob, ref)
    where = rng.randrange(len(prob.ops))
    v, lines = prob.operands[0], []
    for k, (op, x) in enumerate(zip(prob.ops, prob.operands[1:], strict=True)):
        a = _slip(rng, v) if k == where and k > 0 and rng.random() < 0.25 else v
        r = arith._apply(a, op, x)
        if k == where and a == v:
            r = _slip(rng, r)
        lines.append(f"{a}{op}{x}={r}")
        v = r
    text = "".join(line + arith.STEP_DELIMITER for line in lines) + f"{arith.ANSWER_PREFIX}{v}\n"
    return prob.prompt(), text, judgement_marks(prob, text)


def _slip(rng: random.Random, v: int) -> int:
    if rng.random() < 0.5:
        s = str(v)
        j = rng.randrange(len(s))
        w = int(s[:j] + rng.choice([d for d in "0123456789" if d != s[j]]) + s[j + 1 :])
    else:
        w = v + rng.choice([-10, -2, -1, 1, 2, 10])
    return w if w != v and w >= 0 else v + 1


def prm_from_policy(policy: Path, new_layers: int) -> LlamaForCausalLM:
    """The frozen policy with fresh layers and its own judgement head on top.

    Judging a character means comparing it with what the policy, one position
    earlier, expected there, and carrying any mismatch forward. The policy's
    expectation exists only at its last layer, so new layers above it do the
    comparing (they start as the identity: zero output projections). Freezing
    the trunk keeps that expectation intact; a full fine-tune on a few thousand
    samples lets it drift and separated steps worse (AUROC 0.71 against 0.78 at
    the same step). The head is untied so judgement logits can move without
    moving the character embeddings the frozen trunk reads. (Building a
    previous-position reader into the first fresh layer, a rotary query and key
    that attend exactly one position back and values that are the policy's
    logits there, did not learn faster: held-out AUROC 0.732 against 0.730 after
    250 steps.)"""
    base = LlamaForCausalLM.from_pretrained(str(policy))
    cfg = base.config
    trunk = cfg.num_hidden_layers
    cfg.num_hidden_layers += new_layers
    cfg.tie_word_embeddings = False
    model = LlamaForCausalLM(cfg)
    state = base.state_dict()
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    missing = model.load_state_dict(state, strict=False).missing_keys
    fresh = tuple(f"model.layers.{i}." for i in range(trunk, cfg.num_hidden_layers))
    assert all(k.startswith(fresh) for k in missing), missing
    for layer in model.model.layers[trunk:]:
        torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
        torch.nn.init.zeros_(layer.mlp.down_proj.weight)
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith((*fresh, "lm_head.", "model.norm."))
    return model


def step_auroc(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, rows: list[PRMRow]) -> float:
    """Held-out step-level AUROC of P(<good>) after each arithmetic step."""
    from ttc.reference.evaluate import auroc

    good = tok.convert_tokens_to_ids(GOOD)
    scores, labels = [], []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(rows), 128):
            chunk = rows[i : i + 128]
            ids, mask, _ = prm_collate(tok, chunk)
            p_good = model(input_ids=ids, attention_mask=mask).logits.softmax(-1)[..., good]
            for r, (prompt, text, marks) in enumerate(chunk):
                head = len(tok(prompt).input_ids)
                for j, ok in marks:
                    if text[j] == arith.STEP_DELIMITER:
                        scores.append(p_good[r, head + j].item())
                        labels.append(ok)
    model.train()
    return auroc(scores, labels)


def train_prm(
    policy: Path,
    path: Path,
    seed: int,
    steps: int,
    batch: int,
    n_problems: int,
    lr: float,
    new_layers: int,
    cache: Path | None = None,
) -> None:
    """Train the PRM on the policy's own samples, half of each batch fresh slipped chains.

    The policy's samples hold only a few thousand real errors; the slipped
    chains add an unbounded stream of the same kinds of error so the new layers
    learn the comparison instead of memorising samples. One problem in eight of
    the policy's samples is held out and its step AUROC printed as training goes."""
    if cache is not None and cache.exists():
        data = [(p, t, [tuple(m) for m in marks]) for p, t, marks in json.loads(cache.read_text())]
    else:
        data = sample_policy_solutions(policy, seed, n_problems, samples=4)
        if cache is not None:
            cache.write_text(json.dumps(data))
    prompts = sorted({p for p, _, _ in data})
    random.Random(f"prm-split:{seed}").shuffle(prompts)
    held = set(prompts[: len(prompts) // 8])
    train = [row for row in data if row[0] not in held]
    test = [row for row in data if row[0] in held and row[0].startswith("Q:")]
    n_marks = sum(len(marks) for _, _, marks in train)
    n_good = sum(ok for _, _, marks in train for _, ok in marks)
    print(f"PRM data: {len(train)} policy solutions ({len(test)} held out), {n_marks} judgements, "
          f"{n_good / n_marks:.2f} good")
    tok = PreTrainedTokenizerFast.from_pretrained(str(policy))
    model = prm_from_policy(policy, new_layers)
    rng = random.Random(f"prm-batches:{seed}")

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        while True:
            rows = rng.sample(train, batch // 2) + [slipped_solution(rng) for _ in range(batch - batch // 2)]
            yield prm_collate(tok, rows)

    fit(model, batches(), steps, lr=lr, loss_fn=token_ce, desc="prm",
        every=(max(1, steps // 12), lambda: f"held-out step AUROC {step_auroc(model, tok, test):.3f}"))
    save(model, tok, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["policy", "prm"], help="train one model (default: both)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policy-steps", type=int, default=2000)
    ap.add_argument("--policy-phase2-steps", type=int, default=800)
    ap.add_argument("--policy-phases", type=int, nargs="+", default=[1, 2], choices=[1, 2],
                    help="2 alone continues the checkpoint at --policy-out")
    ap.add_argument("--prm-steps", type=int, default=3000)
    ap.add_argument("--prm-lr", type=float, default=3e-3)
    ap.add_argument("--prm-new-layers", type=int, default=2)
    ap.add_argument("--prm-data-cache", type=Path, default=None, help="reuse sampled PRM data (JSON)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prm-problems", type=int, default=2000)
    ap.add_argument("--policy-out", type=Path, default=POLICY_PATH)
    ap.add_argument("--prm-out", type=Path, default=PRM_PATH)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.only in (None, "policy"):
        train_policy(
            args.policy_out, args.seed, args.policy_steps, args.policy_phase2_steps, args.batch, args.policy_phases
        )
    if args.only in (None, "prm"):
        train_prm(
            args.policy_out, args.prm_out, args.seed, args.prm_steps, args.batch, args.prm_problems, args.prm_lr,
            args.prm_new_layers, args.prm_data_cache,
        )


if __name__ == "__main__":
    main()
