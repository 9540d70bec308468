"""The Mixed-R1 task types: one list shared by the rewards, the data schema and the tools.

A plain module without imports, so the data layer and the CLI can name task types without
loading the rewards (and torch).
"""

TASK_TYPES = ("yes_no", "multiple_choice", "chart", "math", "grounding", "open_ended")

# the fields of a sample (mixed_r1.data.schema.Sample), the names data.columns maps onto
SAMPLE_FIELDS = ("id", "task_type", "question", "solution", "images", "options", "messages",
                 "source", "meta")
