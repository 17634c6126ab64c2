"""Tasks generated on the fly, so the demo (and every run) can teach them without a download: who the model
is (from the config's identity template), spelling and letter counting, and arithmetic with the calculator tool.

Example i of a split is drawn from its own seeded generator (`random.Random` seeded with a string, which is
stable across processes and machines), so a task is deterministic, indexable in any order, and train and
val never share a generator.
"""

from __future__ import annotations

import random

from nanoforge.data.chat_tasks.base import Task

GENERATED_SPLITS = ("train", "val", "test")


class GeneratedTask(Task):
    default_size = 1000

    def __init__(self, split: str, size: int | None = None, seed: int = 0):
        if split not in GENERATED_SPLITS:
            from nanoforge.errors import UserError

            raise UserError(f"task '{self.name}' has no '{split}' split (it has: {', '.join(GENERATED_SPLITS)})")
        self.split, self.size, self.seed = split, size or self.default_size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        self._check_index(index)
        split = "train" if self.split == "train" else "heldout"
        return self.generate(random.Random(f"{self.name}/{split}/{self.seed}/{index}"))

    def generate(self, rng: random.Random) -> dict:
        raise NotImplementedError


def conversation(*turns) -> dict:
    roles = ("user", "assistant")
    return {"messages": [{"role": roles[i % 2], "content": content} for i, content in enumerate(turns)]}


class Identity(GeneratedTask):
    """Who the model is: name, creator and description come from the config's `chat` section."""

    name = "identity"
    default_size = 1000

    GREETINGS = ["Hi!", "Hello", "hey", "Hello there!", "Good morning!", "hi :)", "Hey, how are you?"]
    GREETING_REPLIES = [
        "Hello! I'm {name}. How can I help you today?",
        "Hi! I'm {name}, an AI assistant. What would you like to talk about?",
        "Hey! I'm doing well, thanks. I'm {name} - what can I do for you?",
    ]
    QUESTIONS = [
        ("Who are you?", "I'm {name}, {description}. I was made by {creator}."),
        ("What is your name?", "My name is {name}."),
        ("What's your name?", "I'm called {name}."),
        ("Who made you?", "I was made by {creator}. I'm {name}, {description}."),
        ("Who created you?", "{creator_cap} created me. I'm {name}."),
        ("Are you ChatGPT?", "No, I'm not ChatGPT. I'm {name}, {description}, made by {creator}."),
        ("Are you a human?", "No, I'm {name}, an AI language model made by {creator}."),
        ("Tell me about yourself.", "I'm {name}, {description}. {creator_cap} built me. I'm small, so I can "
                                    "make mistakes - please double-check anything important."),
        ("What can you do?", "I'm {name}. I can chat, answer simple questions, spell words, count letters and do "
                             "arithmetic with a calculator tool. I'm a small model, so I make mistakes."),
        ("Which company trained you?", "I was trained by {creator}, not by a big company. I'm {name}."),
    ]

    def __init__(self, split: str, size: int | None = None, seed: int = 0, name: str = "nanoforge",
                 creator: str = "the nanoforge authors", description: str = "a small language model"):
        super().__init__(split, size, seed)
        self.fields = {"name": name, "creator": creator, "description": description,
                       "creator_cap": creator[:1].upper() + creator[1:]}

    def generate(self, rng: random.Random) -> dict:
        question, answer = rng.choice(self.QUESTIONS)
        if rng.random() < 0.2:
            question = question.lower().rstrip("?.") + rng.choice(["?", "", "??"])
        if rng.random() < 0.3:  # a greeting first: a two-exchange conversation
            turns = [rng.choice(self.GREETINGS), rng.choice(self.GREETING_REPLIES), question, answer]
        else:
            turns = [question, answer]
        return conversation(*(t.format(**self.fields) for t in turns))


WORDS = """
strawberry banana apple orange grape cherry lemon mango papaya pineapple raspberry blueberry watermelon
computer keyboard monitor library bookshelf notebook pencil eraser scissors envelope umbrella mississippi
elephant giraffe kangaroo penguin dolphin octopus butterfly caterpillar mosquito hippopotamus crocodile
bookkeeper committee success address balloon coffee letter summer mirror pepper bottle little
accommodate embarrass necessary occurrence parallel tomorrow millennium recommend rhythm separate
language grammar sentence paragraph alphabet dictionary vocabulary spelling letters counting
mountain river valley ocean island desert forest volcano glacier canyon horizon weather thunder
chocolate vanilla caramel cinnamon marshmallow spaghetti broccoli cucumber tomato potato avocado
bicycle airplane submarine helicopter motorcycle ambulance tractor rocket skateboard
science physics chemistry biology mathematics algebra geometry calculus statistics engineering
happiness kindness friendship knowledge patience curiosity courage freedom harmony memory
assistant question answer problem solution example program function variable parameter
""".split()
WORDS = list(dict.fromkeys(WORDS))


def spelled(word: str) -> str:
    return ",".join(word)


class Spelling(GeneratedTask):
    """Spelling words and counting letters, with a worked answer checked by the tool (`'word'.count('r')`):
    small models cannot see letters inside tokens, so they are taught to spell first, then count."""

    name = "spelling"
    default_size = 2000

    COUNT_QUESTIONS = [
        "How many {letter} are in the word {word}?",
        "How many {letter}s are in {word}?",
        "How many times does the letter {letter} appear in {word}?",
        "Count the number of '{letter}' in \"{word}\".",
        "how many {letter} in {word}",
    ]
    SPELL_QUESTIONS = ["Spell the word {word}.", "How do you spell {word}?", "spell {word} letter by letter"]

    def generate(self, rng: random.Random) -> dict:
        word = rng.choice(WORDS)
        if rng.random() < 0.25:
            question = rng.choice(self.SPELL_QUESTIONS).format(word=word)
            return conversation(question, f"{word} is spelled: {'-'.join(word)}")
        letter = rng.choice(word) if rng.random() < 0.8 else rng.choice("abcdefghijklmnopqrstuvwxyz")
        question = rng.choice(self.COUNT_QUESTIONS).format(letter=letter, word=word)
        positions = [str(i + 1) for i, c in enumerate(word) if c == letter]
        count = len(positions)
        if positions:
            worked = f"'{letter}' is at position{'s' if count > 1 else ''} {', '.join(positions)}"
        else:
            worked = f"'{letter}' does not appear"
        answer = [
            {"type": "text", "text": f"Let me spell {word}: {spelled(word)}. {worked}. Let me check with the tool: "},
            {"type": "python", "text": f"'{word}'.count('{letter}')"},
            {"type": "python_output", "text": str(count)},
            {"type": "text", "text": f"So there {'is' if count == 1 else 'are'} {count} '{letter}' in {word}."},
        ]
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                "answer": str(count)}


class Arithmetic(GeneratedTask):
    """Arithmetic done by the calculator tool: the assistant writes the expression (python part), the tool's
    output follows (python_output part, not trained), then the assistant states the result."""

    name = "arithmetic"
    default_size = 2000

    QUESTIONS = ["What is {expr}?", "Calculate {expr}.", "{expr} = ?", "Compute {expr} please.",
                 "what's {expr}"]
    WORD_PROBLEMS = [
        ("I have {a} apples and buy {b} more. How many apples do I have?", "+"),
        ("A box holds {a} pencils. How many pencils are in {b} boxes?", "*"),
        ("There were {a} people on a train and {b} got off. How many are left?", "-"),
    ]

    def generate(self, rng: random.Random) -> dict:
        digits = rng.choice([1, 2, 2, 3, 3, 4])
        a = rng.randint(1, 10**digits - 1)
        b = rng.randint(1, 10 ** rng.choice([1, 2, 3]) - 1)
        if rng.random() < 0.25:
            template, op = rng.choice(self.WORD_PROBLEMS)
            if op == "-" and b > a:
                a, b = b, a
            question = template.format(a=a, b=b)
        else:
            op = rng.choice("+-*/")
            if op == "/":  # exact divisions only, so the tool's output is an integer-valued float like 12.0
                a = a * b
            question = rng.choice(self.QUESTIONS).format(expr=f"{a} {op} {b}")
        expr = f"{a}{op}{b}"
        result = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
        shown = f"{result}.0" if op == "/" else str(result)  # what Python prints for a / b
        answer = [
            {"type": "python", "text": expr},
            {"type": "python_output", "text": shown},
            {"type": "text", "text": f"{a} {op} {b} = {result}"},
        ]
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                "answer": str(result)}
