"""Train the reference policy and process-reward model from scratch on the CPU.

    python -m ttc.reference.train            # both models, about 25 minutes on 2 cores
    python -m ttc.reference.train --only prm # retrain the PRM on the shipped policy

Deterministic for a seed (fixed step counts, seeded data streams, one thread
order). The PRM is trained on the policy's own sampled solutions, each step
labelled by exact checking (Math-Shepherd style judgement tokens).
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


def policy_example(rng: random.Random) -> tuple[str, str]:
    """One (prompt, completion) pair from the policy's training mixture."""
    r = rng.random()
    if r < 0.30:
        p = synth_code.generate(1, seed=rng.getrandbits(48))[0]
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
    """AdamW with linear warm-up and cosine decay; labels are next-token targets."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
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
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
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


def train_policy(path: Path, seed: int, steps: int, batch: int) -> None:
    tok = save_tokenizer(path)
    model = new_model(tok, seed)
    rng = random.Random(f"policy-data:{seed}")

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        while True:
            yield collate(tok, [policy_example(rng) for _ in range(batch)])

    fit(model, batches(), steps, lr=3e-3, loss_fn=token_ce, desc="policy")
    save(model, tok, path)


# ----------------------------------------------------------------------------- PRM


def sample_policy_solutions(
    policy: Path, seed: int, n_problems: int, samples: int
) -> list[tuple[str, str, list[tuple[int, bool]]]]:
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
                ref, text = prob.solution(), c.text
                data.append((prompt, text, [(j, text[: j + 1] == ref[: j + 1]) for j in range(len(text))]))
            else:
                program = synth_code.extract_program(c.text)
                text = program + arith.STEP_DELIMITER
                data.append((prompt, text, [(len(text) - 1, synth_code.passes(program, prob.hidden))]))
    return data


def prm_collate(
    tok: PreTrainedTokenizerFast, rows: list[tuple[str, str, list[tuple[int, bool]]]]
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


def prm_from_policy(policy: Path) -> LlamaForCausalLM:
    """The policy plus one fresh top layer that starts as the identity.

    Judging a character means comparing it with what the policy, one position
    earlier, expected there. The policy's prediction exists only at its last
    layer, so a new layer above it can read it by attending one position back;
    zero output projections make that layer a no-op until it learns to."""
    base = LlamaForCausalLM.from_pretrained(str(policy))
    cfg = base.config
    cfg.num_hidden_layers += 1
    model = LlamaForCausalLM(cfg)
    missing = model.load_state_dict(base.state_dict(), strict=False).missing_keys
    assert all(k.startswith(f"model.layers.{cfg.num_hidden_layers - 1}.") for k in missing), missing
    top = model.model.layers[-1]
    torch.nn.init.zeros_(top.self_attn.o_proj.weight)
    torch.nn.init.zeros_(top.mlp.down_proj.weight)
    return model


def train_prm(
    policy: Path, path: Path, seed: int, steps: int, batch: int, n_problems: int, lr: float, cache: Path | None = None
) -> None:
    """Train the PRM (policy + one layer) to predict <good>/<bad> on the policy's own samples."""
    if cache is not None and cache.exists():
        data = [(p, t, [tuple(m) for m in marks]) for p, t, marks in json.loads(cache.read_text())]
    else:
        data = sample_policy_solutions(policy, seed, n_problems, samples=4)
        if cache is not None:
            cache.write_text(json.dumps(data))
    n_marks = sum(len(marks) for _, _, marks in data)
    n_good = sum(ok for _, _, marks in data for _, ok in marks)
    print(f"PRM data: {len(data)} solutions, {n_marks} judgements, {n_good / n_marks:.2f} good")
    tok = PreTrainedTokenizerFast.from_pretrained(str(policy))
    model = prm_from_policy(policy)
    rng = random.Random(f"prm-batches:{seed}")

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        while True:
            yield prm_collate(tok, rng.sample(data, batch))

    fit(model, batches(), steps, lr=lr, loss_fn=token_ce, desc="prm")
    save(model, tok, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["policy", "prm"], help="train one model (default: both)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policy-steps", type=int, default=2000)
    ap.add_argument("--prm-steps", type=int, default=1500)
    ap.add_argument("--prm-lr", type=float, default=1e-3)
    ap.add_argument("--prm-data-cache", type=Path, default=None, help="reuse sampled PRM data (JSON)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prm-problems", type=int, default=2000)
    ap.add_argument("--policy-out", type=Path, default=POLICY_PATH)
    ap.add_argument("--prm-out", type=Path, default=PRM_PATH)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.only in (None, "policy"):
        train_policy(args.policy_out, args.seed, args.policy_steps, args.batch)
    if args.only in (None, "prm"):
        train_prm(
            args.policy_out, args.prm_out, args.seed, args.prm_steps, args.batch, args.prm_problems, args.prm_lr,
            args.prm_data_cache,
        )


if __name__ == "__main__":
    main()
