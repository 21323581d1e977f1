"""Code: a random policy alternates "invent and initialize variables", "invent a function" and "call a
function" steps. The model writes the variables and functions (validated with ast.parse, never executed);
call steps are written from the policy, which records the call tree. Mechanistic questions ("Which function
produced v?", "List all variables that participated in computing v", "How is v initialized?") are answered
from the recorded tree, never by the model; "Summarize function f" is answered by the model.

Each step's code is one relevant passage (noun "python code"); distractors are ordinary pool passages. Names
are unique across the program, so the questions stay answerable when the pieces are shuffled.
"""

from __future__ import annotations

import ast
import json
import keyword
import random
import re
from dataclasses import dataclass, field

from selfctx.synth.filters import Dropped, check_text
from selfctx.synth.nouns import draw_nouns
from selfctx.synth.parsing import clean_passage, first_line, strip_code_fences
from selfctx.synth.tasks.base import BuildGen, TaskContext, failed
from selfctx.synth.types import SampleDraft

CODE_NOUN = "python code"
# A one-line example helps a small model keep the format; its names vary by item so they are not copied.
# The model invents the variables' names; the policy initializes them with numbers (SmolLM2-135M rarely
# writes a bare assignment line when asked, but names quantities reliably).
VARS_PROMPT = (
    "Invent two short Python variable names for quantities about {noun}, like: {example}.{taken} "
    "Write only the two names, separated by a comma."
)
FUNC_PROMPT = (
    "Python code:\n{example}\n\nWrite a similar short Python function with a different name and "
    "formula.{taken} Write only the code."
)
VAR_EXAMPLES = ("width, height", "speed, duration", "apple_count, pear_count", "row_total, col_total")
FUNC_EXAMPLES = (
    "def area(w, h):\n    return w * h",
    "def total_cost(price, count):\n    return price * count + 2",
    "def mean(a, b):\n    return (a + b) / 2",
)
SUMMARY_PROMPT = (
    "Python code:\n{code}\n\nIn one sentence, what does the function {name} compute? Write only the sentence."
)


@dataclass
class CallTree:
    """Which code defined each variable and which variables each call consumed."""

    init_line: dict[str, str] = field(default_factory=dict)  # variable -> the line that initialized it
    produced_by: dict[str, str] = field(default_factory=dict)  # variable -> function whose call produced it
    inputs: dict[str, list[str]] = field(default_factory=dict)  # variable -> argument variables of that call
    functions: dict[str, int] = field(default_factory=dict)  # function -> number of parameters
    order: list[str] = field(default_factory=list)  # variables in definition order

    def participants(self, var: str) -> list[str]:
        """Every variable that (transitively) flowed into `var`, in definition order."""
        seen: set[str] = set()
        stack = list(self.inputs.get(var, []))
        while stack:
            v = stack.pop()
            if v not in seen:
                seen.add(v)
                stack.extend(self.inputs.get(v, []))
        return [v for v in self.order if v in seen]

    def to_json(self) -> dict[str, object]:
        return {
            "init_line": self.init_line,
            "produced_by": self.produced_by,
            "inputs": self.inputs,
            "functions": self.functions,
            "order": self.order,
        }


def _constant(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.operand, ast.Constant)
    if isinstance(node, ast.Tuple | ast.List):
        return all(_constant(e) for e in node.elts)
    return False


def parse_vars(code: str, taken: set[str]) -> tuple[str, list[str]] | None:
    """(lines, new names): the lines of `code` that assign constants to new plain names, else None.

    A small model often wraps the assignment in other code; only the plain constant assignments are kept.
    """
    kept_lines: list[str] = []
    names: list[str] = []
    for line in code.splitlines():
        if line[:1].isspace():
            continue  # inside a block: not a top-level assignment
        try:
            body = ast.parse(line).body
        except SyntaxError:
            continue
        if len(body) != 1 or not isinstance(body[0], ast.Assign) or not _constant(body[0].value):
            continue
        targets: list[str] = []
        for target in body[0].targets:
            elts = target.elts if isinstance(target, ast.Tuple) else [target]
            if not all(isinstance(e, ast.Name) for e in elts):
                targets = []
                break
            targets += [e.id for e in elts if isinstance(e, ast.Name)]
        if targets and not (set(targets) & (taken | set(names))) and len(set(targets)) == len(targets):
            kept_lines.append(line.rstrip())
            names += targets
    if not names:
        return None
    return "\n".join(kept_lines), names


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_ ]*")


def invented_vars(text: str, taken: set[str], rng: random.Random) -> tuple[str, list[str]] | None:
    """An assignment line for the (up to two) variable names the model invented, with numbers from rng."""
    names: list[str] = []
    for raw in first_line(text).split(","):
        match = _NAME.search(raw.strip().strip("`'\""))
        if not match:
            continue
        name = re.sub(r"\s+", "_", match.group(0).strip()).lower()
        if name.isidentifier() and not keyword.iskeyword(name) and name not in taken and name not in names:
            names.append(name)
    names = names[:2]
    if not names:
        return None
    values = [str(rng.randint(1, 99)) for _ in names]
    return f"{', '.join(names)} = {', '.join(values)}", names


def _parse_prefix(code: str) -> ast.Module | None:
    """The AST of the longest prefix of whole lines that parses (models often trail off mid-statement)."""
    lines = code.splitlines()
    for end in range(len(lines), 0, -1):
        try:
            return ast.parse("\n".join(lines[:end]))
        except SyntaxError:
            continue
    return None


def parse_function(code: str, taken: set[str]) -> tuple[str, str, int] | None:
    """(source, name, n_params) of the first top-level function with 1-3 plain parameters, else None."""
    tree = _parse_prefix(code)
    if tree is None:
        return None
    source_text = "\n".join(code.splitlines())
    for func in tree.body:
        if not isinstance(func, ast.FunctionDef):
            continue
        n = len(func.args.args)
        if func.name in taken or not 1 <= n <= 3 or func.args.vararg or func.args.kwarg:
            return None
        return ast.get_source_segment(source_text, func) or source_text, func.name, n
    return None


def _policy(ctx: TaskContext) -> list[str]:
    """vars, func first; then a random mix; at least one call (the mechanistic questions need one)."""
    steps = ["vars", "func"]
    for _ in range(ctx.rng.randint(2, 4)):
        steps.append(ctx.rng.choice(["vars", "func", "call", "call"]))
    if "call" not in steps:
        steps.append("call")
    return steps


def build(ctx: TaskContext) -> BuildGen:
    tree = CallTree()
    pieces: list[str] = []
    taken: set[str] = set()
    calls = 0
    for step in _policy(ctx):
        if step == "call":
            if not tree.functions:
                continue
            name = ctx.rng.choice(sorted(tree.functions))
            n = tree.functions[name]
            if len(tree.order) < n:
                continue
            args = ctx.rng.sample(tree.order, n)
            calls += 1
            out = f"result_{calls}"
            while out in taken:
                out += "_"
            pieces.append(f"{out} = {name}({', '.join(args)})")
            taken.add(out)
            tree.produced_by[out], tree.inputs[out] = name, args
            tree.order.append(out)
            continue
        template, examples = (VARS_PROMPT, VAR_EXAMPLES) if step == "vars" else (FUNC_PROMPT, FUNC_EXAMPLES)
        prompt = template.format(
            example=ctx.rng.choice(examples),
            noun=draw_nouns(ctx.rng, 1)[0],
            taken=f" Do not use the names {', '.join(sorted(taken))}." if taken else "",
        )
        (reply,) = yield [ctx.request(prompt, max_tokens=96 if step == "vars" else 160)]
        if drop := failed(reply):
            return drop
        code = strip_code_fences(reply.text).strip()
        if step == "vars":
            parsed_vars = parse_vars(code, taken) or invented_vars(code, taken, ctx.rng)
            if parsed_vars is None:
                return Dropped("malformed", "variables step")
            for var in parsed_vars[1]:
                tree.init_line[var] = parsed_vars[0]
                tree.order.append(var)
            taken.update(parsed_vars[1])
            pieces.append(parsed_vars[0])
        else:
            parsed_func = parse_function(code, taken)
            if parsed_func is None:
                return Dropped("malformed", "function step")
            source, name, n = parsed_func
            tree.functions[name] = n
            taken.add(name)
            pieces.append(source)
    if calls == 0:
        return Dropped("malformed", "no call could be made")

    kind = ctx.rng.choice(["produced_by", "participants", "init", "summarize"])
    results = [v for v in tree.order if v in tree.produced_by]
    if kind == "produced_by":
        var = ctx.rng.choice(results)
        question, answer = f"Which function produced {var}?", tree.produced_by[var]
    elif kind == "participants":
        var = ctx.rng.choice(results)
        question = f"List all variables that participated in computing {var}."
        answer = ", ".join(tree.participants(var))
    elif kind == "init":
        var = ctx.rng.choice(list(tree.init_line))
        question, answer = f"How is the variable {var} initialized?", tree.init_line[var]
    else:
        name = ctx.rng.choice(sorted(tree.functions))
        source = next(p for p in pieces if p.startswith(f"def {name}("))
        (reply,) = yield [ctx.request(SUMMARY_PROMPT.format(code=source, name=name), max_tokens=80)]
        if drop := failed(reply):
            return drop
        answer = clean_passage(reply.text)
        if reason := check_text(answer, min_words=4):
            return Dropped(reason, "function summary")
        question = f"Summarize the function {name}."
    relevant = tuple(ctx.new_passage(CODE_NOUN, "code", piece, str(i)) for i, piece in enumerate(pieces))
    return SampleDraft(
        task="code",
        relevant=relevant,
        instruction="The passages are pieces of one Python program. Answer the question about the program.",
        question=question,
        answer=answer,
        nouns=(),
        extra={
            "question_kind": kind,
            "call_tree": json.dumps(tree.to_json()),
            "answer_source": "model" if kind == "summarize" else "call_tree",
        },
    )
