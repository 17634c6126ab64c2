"""How well a tokenizer compresses text (UTF-8 bytes per token, higher is better), next to OpenAI's
cl100k_base (GPT-4) and o200k_base (GPT-4o).

The reference vocabularies come from the `bpe-openai` wheel, which ships them inside the package;
`tiktoken.get_encoding` would download them, and compute nodes have no network. GPT-2's vocabulary is not
shipped by the wheel (it would be downloaded), so it is not compared.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

REFERENCE_ENCODINGS = ("cl100k_base", "o200k_base")

# Small hand-written samples of the kinds of text a chat model meets.
SAMPLE_TEXTS: dict[str, str] = {
    "news": (
        "City council members voted 7 to 2 on Tuesday to expand the downtown bike lane network, a plan that "
        "supporters say will cut commute times and critics warn could slow deliveries. The $4.8 million project "
        "adds 12 kilometres of protected lanes over the next two years. \"We heard from hundreds of residents,\" "
        "said the council's transport chair, adding that construction would start in early spring and be done "
        "in phases to keep at least one lane open on every street. Local businesses asked for loading zones to "
        "be marked before work begins; the council agreed to publish a map of them by the end of the month."
    ),
    "code": (
        "def moving_average(values: list[float], window: int) -> list[float]:\n"
        "    \"\"\"Average of each run of `window` consecutive values.\"\"\"\n"
        "    if window <= 0:\n"
        "        raise ValueError(f\"window must be positive, got {window}\")\n"
        "    totals, running = [], 0.0\n"
        "    for i, value in enumerate(values):\n"
        "        running += value\n"
        "        if i >= window:\n"
        "            running -= values[i - window]\n"
        "        if i >= window - 1:\n"
        "            totals.append(running / window)\n"
        "    return totals\n\n\n"
        "class Counter:\n"
        "    def __init__(self):\n"
        "        self.counts = {}\n\n"
        "    def add(self, key):\n"
        "        self.counts[key] = self.counts.get(key, 0) + 1\n"
    ),
    "math": (
        "Let f(x) = 3x^2 - 12x + 7. Then f'(x) = 6x - 12, which is zero at x = 2, so the minimum is "
        "f(2) = 12 - 24 + 7 = -5. For the sum 1 + 2 + ... + n we have n(n + 1)/2; with n = 100 this gives 5050. "
        "Solve the system 2a + 3b = 13, a - b = -1: from the second a = b - 1, so 2(b - 1) + 3b = 13, 5b = 15, "
        "b = 3 and a = 2. The probability of at least one six in four rolls is 1 - (5/6)^4 = 1 - 625/1296 "
        "= 671/1296 = 0.5177. \\int_0^1 x^3 dx = 1/4, and \\sqrt{144} = 12."
    ),
    "multilingual": (
        "El mercado abre a las nueve y cierra cuando se acaba el pan. "
        "Le train de 8 h 15 a été annulé à cause de la neige. "
        "Der Schlüssel liegt unter dem Blumentopf neben der Tür. "
        "Мы встретимся у библиотеки после занятий. "
        "今天下午我们在图书馆见面，然后一起去吃饭。 "
        "明日は雨が降るかもしれないので、傘を持って行ってください。 "
        "도서관은 오전 아홉 시에 문을 엽니다. "
        "سأتصل بك عندما أصل إلى المحطة. "
        "आज शाम को हम पार्क में टहलने जाएंगे। "
        "Καλημέρα, τι κάνεις; 🙂👍"
    ),
    "chat": (
        "Hi! Could you help me plan a three-day trip? I like museums, long walks and cheap food.\n"
        "Of course. Day 1: start with the history museum when it opens, then walk along the river to the old "
        "market for lunch. Day 2: take the morning train to the coast, hike the cliff path (about 9 km) and eat "
        "at one of the fish stalls by the harbour. Day 3: visit the art gallery (free on Sundays) and finish "
        "with the food trucks in the park. Want me to add rough costs?"
    ),
}


def bytes_per_token(texts: Sequence[str], encode: Callable[[str], list[int]]) -> tuple[int, int, float]:
    """(bytes, tokens, bytes per token) over all `texts`."""
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(encode(t)) for t in texts)
    return n_bytes, n_tokens, (n_bytes / n_tokens if n_tokens else 0.0)


def reference_encoders() -> dict[str, Callable[[str], list[int]]]:
    """name -> encode function for each reference vocabulary the installed bpe-openai wheel carries."""
    encoders = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # bpe-openai's use of legacy importlib.resources
        try:
            import bpe_openai
        except ImportError:
            return {}
        for name in REFERENCE_ENCODINGS:
            try:
                encoding = bpe_openai.get_encoding(name)
                encoding.encode_ordinary("warm up")  # load the vocabulary now, inside the filter
            except Exception:  # not shipped in this wheel version: it would try to download
                continue
            encoders[name] = encoding.encode_ordinary
    return encoders


def compare(named_texts: dict[str, Sequence[str]], encoders: dict[str, Callable[[str], list[int]]]) -> dict:
    """{text name: {"bytes": n, encoder name: {"tokens": n, "bytes_per_token": x}}}"""
    results = {}
    for text_name, texts in named_texts.items():
        row: dict = {}
        for encoder_name, encode in encoders.items():
            n_bytes, n_tokens, ratio = bytes_per_token(texts, encode)
            row["bytes"] = n_bytes
            row[encoder_name] = {"tokens": n_tokens, "bytes_per_token": round(ratio, 4)}
        results[text_name] = row
    return results


def format_table(results: dict, encoder_names: Sequence[str]) -> str:
    header = f"{'text':<14}{'bytes':>11}" + "".join(f"{name:>14}" for name in encoder_names)
    lines = [header, "-" * len(header)]
    for text_name, row in results.items():
        cells = "".join(f"{row[name]['bytes_per_token']:>14.2f}" for name in encoder_names)
        lines.append(f"{text_name:<14}{row['bytes']:>11}{cells}")
    lines.append("(UTF-8 bytes per token; higher compresses better)")
    return "\n".join(lines)
