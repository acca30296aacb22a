"""The reference process-reward model: the policy's own surprise, served as a causal LM.

A chain goes wrong where the policy writes a character it did not expect: a
sampled slip is, by construction, a low-probability draw. So the PRM judges a
prefix by the lowest log-probability the policy gave any character of the
completion so far (Math-Shepherd labels are cumulative: once wrong, every later
step is wrong too)::

    P(<good> | prefix) = sigmoid(a * softmin_t log p_policy(x_t | x_<t) + b)

Learning that comparison from a few thousand labelled samples did not work (a
frozen policy with fresh layers on top reached step AUROC 0.78 after 25
minutes), so it is built instead, in ``LlamaForCausalLM`` layers that vLLM,
SGLang and transformers serve unchanged:

- the policy's layers, widened with scratch dimensions that they never read
  (one-hot copies of the judged characters ride in the embedding at a scale
  far below the policy's norms);
- a *reader* layer: one attention head attends exactly one position back
  (constant rotary query and key biases) and copies the policy's logits from
  there; the MLP forms ``log p(x_t) = z[x_t] - logsumexp(z)`` (a product of the
  one-hot and the logits, minus a fitted logsumexp over the judged characters,
  which hold nearly all of the policy's mass inside a completion);
- a *mask* layer: uniform heads count newlines and the sequence start exactly,
  which tells the prompt (never predicted by the policy, so never judged) from
  the completion;
- a *min* layer: one attention head over the completion so far, weighted by
  ``exp(-BETA * log p)``: a soft minimum;
- a judgement head: ``<good>``/``<bad>`` logits from that minimum.

Two pieces are fitted, both on the policy's own sampled solutions: the
logsumexp MLP (regression on the policy's logits) and the calibration ``a, b``
(logistic regression on step labels from exact checking). A large constant
written into one scratch dimension makes every RMS norm after the reader
layer's attention a fixed scale, so the scratch arithmetic stays linear.
``tests/test_reference_training.py`` checks the layers against the same
quantity computed from the policy's logits directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ttc.reference.tokenizer import BAD, EOS, GOOD

# Characters whose probability the PRM reads: the arithmetic chains and the
# code task's programs. Any other character in a completion reads as
# impossible (log p = -logsumexp), which is what a wrong character is.
JUDGED = [*"0123456789+-*=:A\n", EOS, *"defrtunx ()"]

BETA = 4.0  # soft-minimum sharpness, per nat
EPS = 1e-3  # scale of the one-hot copies in the embedding: invisible to the policy's norms
BIG = 1e5  # the constant that fixes the scale of every later norm
MASK = 1e3  # added to the prompt's keys so the soft minimum skips them
ZERO_TEST = 2e5  # slope of the mask's zero tests: newline fractions are >= 0.5/1024 when positive
PREV_GAIN = 250.0  # previous-position head: score margin ~ PREV_GAIN * 0.69 / sqrt(head_dim)
PREV_FREQS = 8  # the fastest rotary frequencies carry the previous-position pattern
GATE = 20.0  # silu(20) = 20 to 1e-8: a gate that is on


@dataclass(frozen=True)
class Layout:
    """Where each scratch quantity lives in the widened residual stream: the
    policy's dimensions first, the scratch ones at the end (so the PRM's own
    config is enough to find them)."""

    hidden: int
    judged: int  # number of judged characters

    @classmethod
    def around(cls, trunk: int, judged: int) -> Layout:
        return cls(hidden=-(-(trunk + 2 * judged + 6) // 32) * 32, judged=judged)

    @property
    def const(self) -> int:  # BIG at every position after the reader layer's attention
        return self.hidden - 1

    @property
    def min(self) -> int:  # soft minimum of the key over the prefix
        return self.hidden - 2

    @property
    def key(self) -> int:  # log p(x_t), plus MASK in the prompt
        return self.hidden - 3

    @property
    def newlines(self) -> int:  # newlines so far / (t + 1)
        return self.hidden - 4

    @property
    def newlines_past_one(self) -> int:  # (newlines so far - 1.5) / (t + 1)
        return self.hidden - 5

    @property
    def bos(self) -> int:  # one-hot of the sequence start
        return self.hidden - 6

    @property
    def logits(self) -> int:  # the policy's logits one position back, per judged character
        return self.bos - self.judged

    @property
    def onehot(self) -> int:  # the character at this position, per judged character
        return self.logits - self.judged


class LogSumExp(torch.nn.Module):
    """A gated MLP of the reader layer's shape that regresses logsumexp of the
    judged logits (the one non-linear function the comparison needs)."""

    def __init__(self, n_in: int, units: int = 352) -> None:
        super().__init__()
        self.gate = torch.nn.Linear(n_in, units)
        self.up = torch.nn.Linear(n_in, units)
        self.down = torch.nn.Linear(units, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(z)) * self.up(z))[..., 0]


def fit_logsumexp(logits: torch.Tensor, steps: int = 6000, seed: int = 0) -> LogSumExp:
    """Regress logsumexp(z) on the policy's judged logits ``[n, judged]`` (held-out
    error about 0.14 nats rms on the policy's own samples)."""
    torch.manual_seed(seed)
    lse = LogSumExp(logits.shape[1])
    target = logits.logsumexp(-1)
    opt = torch.optim.Adam(lse.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(logits), (2048,), generator=gen)
        loss = (lse(logits[idx]) - target[idx]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return lse.eval()


def judged_logits(policy: LlamaForCausalLM, tok: PreTrainedTokenizerFast, texts: list[tuple[str, str]],
                  batch: int = 64) -> torch.Tensor:
    """The policy's logits over the judged characters at every completion position."""
    ids_judged = tok.convert_tokens_to_ids(JUDGED)
    out = []
    for i in range(0, len(texts), batch):
        chunk = texts[i : i + batch]
        logits = forward_padded(policy, tok, [p + t for p, t in chunk])
        for row, (prompt, text) in zip(logits, chunk, strict=True):
            head = len(tok(prompt).input_ids)
            out.append(row[head - 1 : head - 1 + len(text), ids_judged])
    return torch.cat(out)


def forward_padded(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    """Logits for a batch of texts, right-padded (causal: padding never reaches a real position)."""
    enc = [tok(text).input_ids for text in texts]
    ids = torch.full((len(enc), max(map(len, enc))), tok.pad_token_id)
    for r, e in enumerate(enc):
        ids[r, : len(e)] = torch.tensor(e)
    with torch.no_grad():
        return model(input_ids=ids).logits


def build(policy: LlamaForCausalLM, tok: PreTrainedTokenizerFast, lse: LogSumExp, a: float = 1.0, b: float = 0.0
          ) -> LlamaForCausalLM:
    """The PRM: the policy widened, then a reader, a prompt-mask and a min layer, and a judgement head."""
    pc = policy.config
    lay = Layout.around(pc.hidden_size, len(JUDGED))
    H, trunk_layers, t = lay.hidden, pc.num_hidden_layers, pc.hidden_size
    cfg = LlamaConfig(**{
        **pc.to_dict(),
        "hidden_size": H,
        "num_hidden_layers": trunk_layers + 3,
        "tie_word_embeddings": False,
        "attention_bias": True,  # constant queries and keys, and the BIG constant, are biases
        "mlp_bias": False,  # SGLang's Llama loads no MLP biases: constants come from the CONST dimension
        "rms_norm_eps": pc.rms_norm_eps * t / H,
    })
    prm = LlamaForCausalLM(cfg)
    sd = {k: torch.zeros_like(v) for k, v in prm.state_dict().items()}
    src = policy.state_dict()
    _widen_policy(sd, src, lay, t, trunk_layers, tok)
    readers = (_reader_layer, _mask_layer, _min_layer)
    for i, layer in enumerate(readers):
        layer(sd, f"model.layers.{trunk_layers + i}.", lay, src=src, tok=tok, lse=lse, config=pc)
    # Judgement head: <good> - <bad> = a * min + b (set_calibration); every other token far below.
    sd["model.norm.weight"][lay.min] = _unit(lay)
    sd["model.norm.weight"][lay.const] = 1 / math.sqrt(H)
    sd["lm_head.weight"][:, lay.const] = -30.0
    prm.load_state_dict(sd)
    set_calibration(prm, tok, a, b)
    return prm.eval()


def _unit(lay: Layout) -> float:
    """A norm weight that reads a scratch value as itself once BIG is in place."""
    return BIG / math.sqrt(lay.hidden)


_ON = F.silu(torch.tensor(GATE)).item()
_HALF_ON = F.silu(torch.tensor(GATE / 2)).item()


def _widen_policy(sd: dict, src: dict, lay: Layout, t: int, layers: int, tok: PreTrainedTokenizerFast) -> None:
    """The policy's weights read and write only the first t dimensions; its norms are
    rescaled for the zero dimensions around them. The judged characters' (and BOS's)
    embeddings carry an EPS one-hot in scratch dimensions."""
    widen = math.sqrt(t / lay.hidden)
    sd["model.embed_tokens.weight"][:, :t] = src["model.embed_tokens.weight"]
    for j, v in enumerate(tok.convert_tokens_to_ids(JUDGED)):
        sd["model.embed_tokens.weight"][v, lay.onehot + j] = EPS
    sd["model.embed_tokens.weight"][tok.bos_token_id, lay.bos] = EPS
    for i in range(layers):
        p = f"model.layers.{i}."
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
            sd[p + name + ".weight"][:, :t] = src[p + name + ".weight"]
        for name in ("self_attn.o_proj", "mlp.down_proj"):
            sd[p + name + ".weight"][:t] = src[p + name + ".weight"]
        for name in ("input_layernorm", "post_attention_layernorm"):
            sd[p + name + ".weight"][:t] = src[p + name + ".weight"] * widen


def _reader_layer(sd: dict, p: str, lay: Layout, *, src: dict, tok: PreTrainedTokenizerFast, lse: LogSumExp,
                  config: LlamaConfig) -> None:
    """KEY = log p_policy(x_t | x_<t) = z_{t-1}[x_t] - logsumexp(z_{t-1}).

    Attention: head 0 attends exactly one position back (rotary query and key
    biases) and copies the policy's logits there: its input norm is the
    policy's final norm and its values the policy's output embedding. The
    output bias writes BIG. MLP: z[x_t] as one-hot times logits, minus the
    fitted logsumexp."""
    t, hd = config.hidden_size, config.head_dim
    assert lay.judged <= hd, "one attention head copies the judged logits"
    sd[p + "input_layernorm.weight"][:t] = src["model.norm.weight"] * math.sqrt(t / lay.hidden)
    theta = config.rope_parameters["rope_theta"] ** (-torch.arange(0, hd, 2).double() / hd)
    for i in range(PREV_FREQS):  # q . k = PREV_GAIN * sum_i cos(theta_i * (offset - 1))
        sd[p + "self_attn.q_proj.bias"][i] = PREV_GAIN * math.cos(theta[i])
        sd[p + "self_attn.q_proj.bias"][i + hd // 2] = -PREV_GAIN * math.sin(theta[i])
        sd[p + "self_attn.k_proj.bias"][i] = 1.0
    E = src["model.embed_tokens.weight"]
    for j, v in enumerate(tok.convert_tokens_to_ids(JUDGED)):
        sd[p + "self_attn.v_proj.weight"][j, :t] = E[v]
        sd[p + "self_attn.o_proj.weight"][lay.logits + j, j] = 1.0
    sd[p + "self_attn.o_proj.bias"][lay.const] = BIG

    unit = _unit(lay)
    norm = sd[p + "post_attention_layernorm.weight"]
    norm[lay.onehot : lay.onehot + lay.judged] = unit / EPS  # reads 1 for the character at t
    norm[lay.logits : lay.logits + lay.judged] = unit
    norm[lay.const] = 1 / math.sqrt(lay.hidden)  # reads 1
    gate, up, down = (sd[p + f"mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
    for j in range(lay.judged):  # z[x_t]: the logit of the character actually written
        gate[j, lay.onehot + j], up[j, lay.logits + j], down[lay.key, j] = GATE, 1.0, 1 / _ON
    u = lay.judged
    gate[u, lay.const], up[u, lay.const] = GATE, 1.0  # the regression's output bias
    down[lay.key, u] = -lse.down.bias.item() / _ON
    u += 1
    n, zs = lse.gate.out_features, slice(lay.logits, lay.logits + lay.judged)
    assert u + n <= gate.shape[0], "the logsumexp MLP does not fit the reader layer"
    with torch.no_grad():
        gate[u : u + n, zs], gate[u : u + n, lay.const] = lse.gate.weight, lse.gate.bias
        up[u : u + n, zs], up[u : u + n, lay.const] = lse.up.weight, lse.up.bias
        down[lay.key, u : u + n] = -lse.down.weight[0]


def _mask_layer(sd: dict, p: str, lay: Layout, *, config: LlamaConfig, **_: object) -> None:
    """KEY += MASK on the prompt, which the policy was never trained to predict.

    The completion starts after the prompt's closing newline: a position is in
    it when a newline came before it, that is, when the newlines up to and
    including it number at least one (for other characters) or two (for a
    newline). Attention: two uniform heads average newline and BOS one-hots,
    giving n/(t+1) and (n - 1.5)/(t+1) exactly. MLP: zero tests on both."""
    unit = _unit(lay)
    nl = lay.onehot + JUDGED.index("\n")
    norm = sd[p + "input_layernorm.weight"]
    norm[nl], norm[lay.bos] = unit / EPS, unit / EPS
    hd = config.head_dim
    q = config.num_attention_heads // config.num_key_value_heads  # first query head on the second key/value head
    v = sd[p + "self_attn.v_proj.weight"]  # second key/value head; no query or key weights, so uniform attention
    v[hd, nl] = 1.0
    v[hd + 1, nl], v[hd + 1, lay.bos] = 1.0, -1.5
    sd[p + "self_attn.o_proj.weight"][lay.newlines, q * hd] = 1.0
    sd[p + "self_attn.o_proj.weight"][lay.newlines_past_one, q * hd + 1] = 1.0

    norm = sd[p + "post_attention_layernorm.weight"]
    norm[lay.newlines], norm[lay.newlines_past_one] = unit, unit
    norm[nl], norm[lay.const] = unit / EPS, 1 / math.sqrt(lay.hidden)
    gate, up, down = (sd[p + f"mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
    # silu(-ZERO_TEST * x + GATE) - silu(-ZERO_TEST * x + GATE / 2) is MASK for x <= 0 and 0 for x >= 0.5/1024
    tests = ((lay.newlines, lay.const), (lay.newlines_past_one, nl))  # (what is tested, which characters)
    u = 0
    for x, applies in tests:
        for level, sign in ((GATE, 1.0), (GATE / 2, -1.0)):
            gate[u, x], gate[u, lay.const], up[u, applies] = -ZERO_TEST, level, 1.0
            down[lay.key, u] = sign * MASK / (_ON - _HALF_ON)
            u += 1


def _min_layer(sd: dict, p: str, lay: Layout, *, config: LlamaConfig, **_: object) -> None:
    """MIN = sum_t softmax(-BETA * KEY)_t * KEY_t over the prefix: a soft minimum.

    Query and key sit on the slowest rotary frequency, where cos(offset * theta)
    stays above 0.98 for a thousand positions."""
    hd = config.head_dim
    slow = hd // 2 - 1
    sd[p + "input_layernorm.weight"][lay.key] = _unit(lay)
    sd[p + "self_attn.q_proj.bias"][slow] = BETA * math.sqrt(hd)
    sd[p + "self_attn.k_proj.weight"][slow, lay.key] = -1.0
    sd[p + "self_attn.v_proj.weight"][0, lay.key] = 1.0
    sd[p + "self_attn.o_proj.weight"][lay.min, 0] = 1.0


def margin(prm: LlamaForCausalLM, tok: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    """logit(<good>) - logit(<bad>) at every position of each text (right-padded):
    ``a * soft minimum + b``."""
    good, bad = tok.convert_tokens_to_ids([GOOD, BAD])
    logits = forward_padded(prm, tok, texts)
    return logits[..., good] - logits[..., bad]


def set_calibration(prm: LlamaForCausalLM, tok: PreTrainedTokenizerFast, a: float, b: float) -> None:
    lay = Layout(prm.config.hidden_size, len(JUDGED))
    good, bad = tok.convert_tokens_to_ids([GOOD, BAD])
    with torch.no_grad():
        head = prm.lm_head.weight
        head[good, lay.min], head[good, lay.const] = a / 2, b / 2
        head[bad, lay.min], head[bad, lay.const] = -a / 2, -b / 2


def calibrate(scores: list[float], labels: list[bool], steps: int = 500) -> tuple[float, float]:
    """Logistic regression of the step label on the soft minimum: (a, b)."""
    x = torch.tensor(scores)
    y = torch.tensor(labels, dtype=torch.float32)
    ab = torch.zeros(2, requires_grad=True)
    opt = torch.optim.LBFGS([ab], max_iter=steps)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(ab[0] * x + ab[1], y)
        loss.backward()
        return loss

    opt.step(closure)
    return ab[0].item(), ab[1].item()
