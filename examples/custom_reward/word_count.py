"""A user reward for a task type Mixed-R1 does not have: count the words of a quoted sentence.

``reward.functions: {word_count: examples/custom_reward/word_count.py:word_count_reward}``
(examples/custom_reward.yaml). A reward function takes the completion text and the sample (a dict
with id, task_type, question, solution, options, images, meta) and returns a number, or a dict with
the reward under "score" and other numbers logged as reward/<task>/<name>.
"""
import re

ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)


def word_count_reward(completion: str, sample: dict) -> dict:
    """1 for the exact count inside <answer></answer>, partial credit ``1 - |error| / gold`` for
    a near miss, 0 without an answer; components: ``answered`` (an integer was given) and
    ``abs_error`` (of the answered ones, else the gold itself)."""
    gold = int(sample["solution"])
    m = ANSWER.search(completion)
    nums = re.findall(r"-?\d+", m.group(1)) if m else []
    if len(nums) != 1:  # no answer, or a hedge between several numbers
        return {"score": 0.0, "answered": 0.0, "abs_error": float(gold)}
    err = abs(int(nums[0]) - gold)
    return {"score": max(0.0, 1.0 - err / gold), "answered": 1.0, "abs_error": float(err)}
