"""Write demo.jsonl: short factual and word questions for the offline demo (deterministic, seeded).

Two kinds of question, each asked with three fixed worked examples of its kind (see utils.py): the capital
of a country, and the opposite of a word. The demo LLM knows many of these; a four-layer student much
fewer, which is what makes routing visible. Run: python tasks/demo/make_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CAPITALS = {
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "China": "Beijing",
    "Russia": "Moscow",
    "Egypt": "Cairo",
    "Canada": "Ottawa",
    "Greece": "Athens",
    "Portugal": "Lisbon",
    "Austria": "Vienna",
    "Poland": "Warsaw",
    "Ireland": "Dublin",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Denmark": "Copenhagen",
    "Peru": "Lima",
    "Kenya": "Nairobi",
    "Cuba": "Havana",
    "Thailand": "Bangkok",
    "India": "New Delhi",
    "Argentina": "Buenos Aires",
    "Turkey": "Ankara",
    "Iran": "Tehran",
    "Chile": "Santiago",
    "Belgium": "Brussels",
    "Hungary": "Budapest",
    "Australia": "Canberra",
    "South Korea": "Seoul",
    "Vietnam": "Hanoi",
    "Indonesia": "Jakarta",
    "Philippines": "Manila",
    "Netherlands": "Amsterdam",
    "Czech Republic": "Prague",
    "Romania": "Bucharest",
    "Bulgaria": "Sofia",
    "Iceland": "Reykjavik",
    "Saudi Arabia": "Riyadh",
    "Iraq": "Baghdad",
    "Syria": "Damascus",
    "Afghanistan": "Kabul",
    "Pakistan": "Islamabad",
    "Nepal": "Kathmandu",
    "Venezuela": "Caracas",
    "Ethiopia": "Addis Ababa",
    "Lebanon": "Beirut",
    "Jordan": "Amman",
    "Qatar": "Doha",
    "New Zealand": "Wellington",
}
OPPOSITES = {
    "up": "down",
    "fast": "slow",
    "happy": "sad",
    "light": "dark",
    "old": "young",
    "open": "closed",
    "early": "late",
    "full": "empty",
    "hard": "soft",
    "wet": "dry",
    "high": "low",
    "rich": "poor",
    "strong": "weak",
    "long": "short",
    "thick": "thin",
    "loud": "quiet",
    "clean": "dirty",
    "true": "false",
    "win": "lose",
    "push": "pull",
    "day": "night",
    "left": "right",
    "inside": "outside",
    "love": "hate",
    "buy": "sell",
    "first": "last",
    "heavy": "light",
    "near": "far",
    "wide": "narrow",
    "sweet": "sour",
}
N_CAPITALS, N_OPPOSITES, SEED = 36, 24, 2026


def build() -> list[dict]:
    """The demo rows, shuffled with a fixed seed."""
    rng = random.Random(SEED)
    rows = [
        {"kind": "capital", "question": c, "answer": a}
        for c, a in rng.sample(sorted(CAPITALS.items()), N_CAPITALS)
    ]
    rows += [
        {"kind": "opposite", "question": w, "answer": a}
        for w, a in rng.sample(sorted(OPPOSITES.items()), N_OPPOSITES)
    ]
    rng.shuffle(rows)
    return [{"id": i, **row} for i, row in enumerate(rows)]


if __name__ == "__main__":
    out = Path(__file__).with_name("demo.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in build()))
    print(f"wrote {out} ({N_CAPITALS + N_OPPOSITES} rows)")
