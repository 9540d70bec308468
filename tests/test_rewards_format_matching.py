"""format_reward and matching_reward: hand-made cases for every rule."""
import pytest

from mixed_r1.rewards import answer_span, extract_answer, format_reward, matching_reward

T = "<think>{}</think><answer>{}</answer>"


@pytest.mark.parametrize("completion,expected", [
    ("<answer>a</answer> <answer>b</answer>", "b"),
    ("no tags at all", "no tags at all"),
    ("<answer>  spaced  </answer>", "spaced"),
    ("<ANSWER>Upper</ANSWER>", "Upper"),
    ("<answer>open only", "<answer>open only"),
    ("<answer>x<answer>y</answer>", "y"),
    ("", ""),
    (None, ""),
])
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize("completion,expected", [
    (T.format("reason", "B"), 1.0),
    ("  \n" + T.format("a\nb", "42") + "\n ", 1.0),
    ("<think>x</think>\n\n<answer>y</answer>", 1.0),
    ("<think></think><answer></answer>", 1.0),
    ("<answer>y</answer><think>x</think>", 0.0),
    ("<think>x</think>", 0.0),
    ("<answer>y</answer>", 0.0),
    ("hello " + T.format("x", "y"), 0.0),
    (T.format("x", "y") + " trailing", 0.0),
    (T.format("x", "y") + "<answer>z</answer>", 0.0),
    ("<think>x<think>y</think><answer>z</answer>", 0.0),
    ("<think>x</think><answer>a<answer>b</answer>", 0.0),
    ("<think>x</think>text<answer>y</answer>", 0.0),
    ("<THINK>x</THINK><ANSWER>y</ANSWER>", 0.0),
    ("<think>x</think><answer>y", 0.0),
    ("", 0.0),
    (None, 0.0),
    (12345, 0.0),
    (T.format("思考 ✓", "答案"), 1.0),
])
def test_format_reward(completion, expected):
    assert format_reward(completion) == expected


@pytest.mark.parametrize("completion,solution,expected", [
    ("Yes", "yes", 1.0),
    ("yes.", "Yes", 1.0),
    ("YES!", "yes", 1.0),
    ("No, it is not.", "no", 1.0),
    ("no", "yes", 0.0),
    (T.format("...", "Yes, and no doubt"), "yes", 1.0),   # the first yes/no word decides
    ("Not really, no.", "no", 1.0),
    ("nobody knows", "no", 0.0),                          # not a standalone word
    ("yesterday", "yes", 0.0),
    ("I don't know", "yes", 0.0),
    ("Ｙｅｓ", "yes", 1.0),                                # full-width unicode
    (T.format("it is yes", "no"), "no", 1.0),             # only the answer span counts
    ("", "yes", 0.0),
])
def test_matching_yes_no(completion, solution, expected):
    assert matching_reward(completion, solution) == expected


OPTS = ["circle", "triangle", "square", "rectangle"]


@pytest.mark.parametrize("completion,solution,expected", [
    ("B", "B", 1.0),
    ("(B)", "B", 1.0),
    ("B.", "B", 1.0),
    ("B)", "B", 1.0),
    ("b", "B", 1.0),
    ("Option B", "B", 1.0),
    ("The answer is B", "B", 1.0),
    ("The answer is B.", "(B)", 1.0),
    ("answer: (b)", "B", 1.0),
    ("B: triangle", "B", 1.0),
    ("B. triangle", "B", 1.0),
    ("(B) triangle", "B", 1.0),
    ("I think it's B", "B", 1.0),
    (T.format("The shape has three corners", "B"), "B", 1.0),
    ("triangle", "B", 1.0),                    # the exact text of one option
    ("Triangle.", "B", 1.0),
    ("C", "B", 0.0),
    ("A or B", "B", 0.0),                      # hedges score 0
    ("(A) and (B)", "B", 0.0),
    ("Option A, or maybe option B", "B", 0.0),
    ("A cat", "A", 0.0),                       # an article, not a commitment
    ("hexagon", "B", 0.0),
    ("", "B", 0.0),
    ("B", "triangle", 1.0),                    # solution given as option text
    ("B", "B. triangle", 1.0),
])
def test_matching_multiple_choice(completion, solution, expected):
    assert matching_reward(completion, solution, OPTS) == expected


def test_matching_options_as_mapping_and_without_options():
    assert matching_reward("square", "C", {"a": "circle", "b": "triangle", "c": "square"}) == 1.0
    assert matching_reward("The answer is (D)", "D") == 1.0
    assert matching_reward("square", "C") == 0.0  # without options text cannot map to a letter


def test_matching_free_text_solution_is_normalized_exact_match():
    assert matching_reward("<answer> Red. </answer>", "red") == 1.0
    assert matching_reward("dark red", "red") == 0.0


# ------------------------------------------------------------------ the answer rule without a tag
@pytest.mark.parametrize("completion,expected", [
    ("<think>x</think><answer> y </answer>", ("y", True)),
    ("<think>x</think> y", ("<think>x</think> y", False)),
    ("<answer>open only", ("<answer>open only", False)),
])
def test_answer_span_says_whether_a_tag_was_found(completion, expected):
    assert answer_span(completion) == expected


@pytest.mark.parametrize("completion,solution,expected", [
    # issue case: no answer tag, the model reasons past a first "yes" to a final "no"
    ("<think>Is it yes? Looking closer, the answer is no.</think>", "yes", 0.0),
    ("<think>Is it yes? Looking closer, the answer is no.</think>", "no", 1.0),
    ("Yes. Wait, no.", "no", 1.0),
    ("No... actually, yes", "yes", 1.0),
    ("no, no, no, YES", "no", 0.0),
    (T.format("Is it yes? Looking closer, no.", "Yes"), "yes", 1.0),  # a tag: its content only
])
def test_untagged_yes_no_reads_the_last_word(completion, solution, expected):
    assert matching_reward(completion, solution) == expected


@pytest.mark.parametrize("completion,solution,expected", [
    ("<think>Maybe A. Looking closer, it is C.</think>", "C", 1.0),
    ("<think>Maybe A. Looking closer, it is C.</think>", "A", 0.0),
    ("I first thought (A). The answer is (B).", "B", 1.0),
    ("I first thought (A).\nThe answer is (B)", "A", 0.0),
    ("The answer is B. Or A or C", "B", 0.0),             # the final sentence hedges
    ("Option D is out. It has three corners, so triangle", "B", 0.0),  # not an option's exact text
    ("It has three corners.\ntriangle", "B", 1.0),         # the last line is option B's text
    (T.format("Maybe A. Looking closer, it is C.", "A"), "A", 1.0),   # a tag: its content only
])
def test_untagged_multiple_choice_reads_the_last_commitment(completion, solution, expected):
    assert matching_reward(completion, solution, OPTS) == expected


def test_empty_answer_earns_format_only_when_allowed():
    from mixed_r1.rewards import MixedReward
    from mixed_r1.rewards.router import RewardConfig

    empty = "<think>hm</think><answer>  </answer>"
    assert format_reward(empty) == 1.0
    assert format_reward(empty, require_answer=True) == 0.0
    assert format_reward("<think>hm</think><answer>no</answer>", require_answer=True) == 1.0
    from mixed_r1.data.schema import Sample

    s = Sample(id="a", task_type="yes_no", question="q?", solution="yes")
    assert MixedReward()([empty], [s]).format == [1.0]
    assert MixedReward(RewardConfig(format_requires_answer=True))([empty], [s]).format == [0.0]


# ------------------------------------------------------------------ hedges (issue 32)
# README: "naming two letters is a hedge and scores 0 ... wherever they stand". Each answer below
# offers two options after a commitment phrase; it must score 0 whichever of them is right.
HEDGES_AFTER_A_COMMITMENT = [
    "The answer is B or C", "The answer is B or C.", "The answer is B/C", "The answer is B / C",
    "Answer: B, C", "Answer: B,C", "The answer is B and C", "The answer is B & C",
    "The answer is B and/or C", "Answer: (B) or C", "The answer is B, or possibly C",
    "Answer: B or maybe C", "The correct option is B or C",
    "The answer is B (triangle) or C (square)", "The answer is B, C or D",
]
# spellings that already scored 0 (regression guards)
HEDGES_ALREADY_CAUGHT = ["The answer is either B or C", "The answer is (B) or (C)",
                         "Answer: B or maybe option C", "The answer is either B, or C",
                         "Option B and/or option C", "B or C", "B/C", "(A) and (B)"]


@pytest.mark.parametrize("answer", HEDGES_AFTER_A_COMMITMENT + HEDGES_ALREADY_CAUGHT)
def test_two_options_after_a_commitment_are_a_hedge(answer):
    for solution in ("B", "C"):
        assert matching_reward(T.format("...", answer), solution, OPTS) == 0.0, solution
        assert matching_reward(answer, solution, OPTS) == 0.0, solution      # without a tag


@pytest.mark.parametrize("answer,solution", [
    # not hedges: an explanation after a committed answer, option text with "and", an article,
    # the same letter twice, a letter that starts its own clause (regression guards)
    ("The answer is B. A is wrong because it is round.", "B"),
    ("The answer is B, and C is a square.", "B"),
    ("The answer is B, and A is a circle", "B"),
    ("The answer is B, not C", "B"),
    ("The answer is B; C is wrong", "B"),
    ("Answer: B since C is a square", "B"),
    ("The answer is B, a triangle", "B"),
    ("The answer is B, I think", "B"),
    ("Between B and C, the answer is B", "B"),
    ("B. triangle and square differ, so B", "B"),
    ("The answer is B or B", "B"),
    ("a triangle, so B", "B"),
])
def test_a_committed_option_with_an_explanation_keeps_its_credit(answer, solution):
    assert matching_reward(T.format("...", answer), solution, OPTS) == 1.0
    assert matching_reward(answer, solution, OPTS) == 1.0


AND_OPTIONS = ["salt and pepper", "bread and butter", "A and B", "none of these"]


@pytest.mark.parametrize("answer", ["C", "C: A and B", "The answer is C. A and B", "A and B"])
def test_option_text_that_names_letters_is_that_option(answer):
    assert matching_reward(T.format("...", answer), "C", AND_OPTIONS) == 1.0
    assert matching_reward(answer, "C", AND_OPTIONS) == 1.0


@pytest.mark.parametrize("answer", [
    "yes or no", "Yes or no.", "yes/no", "No/Yes", "Yes, or no", "either yes or no",
    "yes and/or no", "yes or maybe no", "no or yes", "Yes and no.", "yes, no", "yes & no",
    "Yes and no, it depends", "Ｙｅｓ ｏｒ ｎｏ",
])
def test_yes_and_no_offered_together_are_a_hedge(answer):
    for solution in ("yes", "no"):
        assert matching_reward(T.format("...", answer), solution) == 0.0, solution
        assert matching_reward(answer, solution) == 0.0, solution


@pytest.mark.parametrize("completion,solution", [
    # not hedges (regression guards): "no" as a determiner, the same word twice, a corrected
    # answer, a question restated before the untagged answer
    (T.format("...", "Yes, no doubt"), "yes"), (T.format("...", "Yes, and no other shape"), "yes"),
    (T.format("...", "No, no."), "no"), ("Yes. Wait, no.", "no"),
    ("Is it yes or no? Looking closer, yes.", "yes"),
])
def test_a_single_yes_no_answer_is_not_a_hedge(completion, solution):
    assert matching_reward(completion, solution) == 1.0


def test_matching_is_fast_and_total_on_hostile_text():
    import time

    hostile = ["answer" + " " * 1000 + "x", "The answer is " + "B or " * 20000,
               "(B) or " * 14000, "yes or no " * 10000, "\x00\ud800" * 1000, "B" + " " * 100000]
    start = time.perf_counter()
    for text in hostile:
        for completion in (text, T.format("", text)):
            assert matching_reward(completion, "B", OPTS) in (0.0, 1.0)
            assert matching_reward(completion, "yes") in (0.0, 1.0)
    assert time.perf_counter() - start < 5.0
