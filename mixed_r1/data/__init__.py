"""Mixed data: one sample schema, JSONL/Parquet IO with validation, converters, prompts and
collation, the synthetic mixed set and the data engine (see the submodules)."""
from mixed_r1.data.io import LoadReport, load_many, load_samples, write_samples
from mixed_r1.data.schema import TASK_TYPES, DataError, Sample, format_box, parse_box, sample_from_dict

__all__ = ["TASK_TYPES", "DataError", "LoadReport", "Sample", "format_box", "load_many",
           "load_samples", "parse_box", "sample_from_dict", "write_samples"]
