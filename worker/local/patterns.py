"""``allowedPattern`` matched the way the SSM Agent (Go, RE2) matches it.

The agent calls ``regexp.MatchString``: an unanchored search with the pattern
exactly as written, so the pattern carries its own ``^...$``. RE2's ``$`` is
the end of the text, while Python's also matches before a final newline; the
pattern is translated so ``"a.csv\\n"`` fails here as it fails there. RE2
features that Python lacks, and RE2's limits (counted repetition above 1000,
lookaround, back-references), are rejected, so a pattern that works here
compiles on the agent too.
"""

from __future__ import annotations

import functools
import re

#: RE2 rejects counted repetitions above this (Go regexp/syntax docs).
_RE2_MAX_REPEAT = 1000

_COUNTED_REPEAT = re.compile(r"\{(\d+)(?:,(\d*))?\}")
_UNSUPPORTED_GROUPS = ("(?=", "(?!", "(?<=", "(?<!", "(?>", "(?<")
_UNSUPPORTED_ESCAPES = {
    "Z": "\\Z (RE2 has only \\z)",
    "p": "\\p{...} Unicode classes (Python's re lacks them)",
    "P": "\\P{...} Unicode classes (Python's re lacks them)",
    "Q": "\\Q...\\E quoting (Python's re lacks it)",
}


# Long on purpose: one scanner over the pattern; its cases share the position and the class state.
@functools.lru_cache(maxsize=128)
def _compile_allowed_pattern(pattern: str) -> re.Pattern[str]:
    """Compile an RE2 ``allowedPattern`` into a Python regex with the same meaning.

    Raises ``ValueError`` for syntax the agent would reject or Python would read
    differently.
    """
    multiline = re.search(r"\(\?[a-zA-Z]*m[a-zA-Z]*[:)]", pattern) is not None
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            if i + 1 >= n:
                raise ValueError("pattern ends with a backslash")
            nxt = pattern[i + 1]
            if not in_class and nxt in "123456789":
                raise ValueError("back-references are not supported by RE2")
            if nxt in _UNSUPPORTED_ESCAPES:
                raise ValueError(f"unsupported escape: {_UNSUPPORTED_ESCAPES[nxt]}")
            if nxt == "x" and pattern[i + 2 : i + 3] == "{":
                raise ValueError("unsupported escape: \\x{...} (Python's re lacks it)")
            # RE2's \z (end of text) is Python's \Z.
            out.append("\\Z" if nxt == "z" and not in_class else pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if pattern.startswith("[:", i):
                raise ValueError("POSIX classes [[:name:]] are not supported by Python's re")
            if ch == "]":
                in_class = False
            out.append(ch)
            i += 1
            continue
        if ch == "[":
            in_class = True
            # A "]" right after "[" or "[^" is a literal in both dialects.
            j = i + 1
            if pattern[j : j + 1] == "^":
                j += 1
            if pattern[j : j + 1] == "]":
                j += 1
            out.append(pattern[i:j])
            i = j
            continue
        if ch == "(" and pattern.startswith(_UNSUPPORTED_GROUPS, i):
            raise ValueError("lookaround, atomic and (?<name>) groups are not supported")
        if ch == "{":
            match = _COUNTED_REPEAT.match(pattern, i)
            if match:
                counts = [int(c) for c in match.groups() if c]
                if any(c > _RE2_MAX_REPEAT for c in counts):
                    raise ValueError(
                        f"counted repetition {match.group(0)} exceeds RE2's limit of "
                        f"{_RE2_MAX_REPEAT}"
                    )
                out.append(match.group(0))
                i = match.end()
                continue
            # Not a repetition in RE2 (e.g. "{,3}"), so a literal; Python might disagree.
            out.append("\\{")
            i += 1
            continue
        # RE2's "$" without (?m) is the end of the text (like \z), never "before a final \n".
        out.append("\\Z" if ch == "$" and not multiline else ch)
        i += 1
    if in_class:
        raise ValueError("unterminated character class")
    # RE2's \d \w \s \b are ASCII-only.
    return re.compile("".join(out), re.ASCII)


def pattern_matches(pattern: str, value: str) -> bool:
    """Whether ``value`` passes ``allowedPattern`` as the SSM Agent checks it.

    The agent calls Go's ``regexp.MatchString``: a search, not a full match, so
    the pattern must be anchored to be strict. Raises ``ValueError`` for a
    pattern the agent could not compile.
    """
    return _compile_allowed_pattern(pattern).search(value) is not None
