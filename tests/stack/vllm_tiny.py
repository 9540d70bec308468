"""Smoke: a tiny Qwen2 built from a config, served by vLLM in-process on CPU, greedy-decoded."""
import os
import sys
import tempfile

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

if __name__ == "__main__":
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out_dir = tempfile.mkdtemp()
    vocab = {chr(ord("a") + i): i for i in range(26)} | {"<unk>": 26, "<eos>": 27, " ": 28}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                            eos_token="<eos>").save_pretrained(out_dir)
    cfg = Qwen2Config(vocab_size=32, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      eos_token_id=27, bos_token_id=27, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).float()
    model.save_pretrained(out_dir)
    prompt = torch.tensor([[0, 1, 2]])
    expected = model.generate(prompt, max_new_tokens=6, do_sample=False,
                              eos_token_id=None)[0, 3:].tolist()

    from vllm import LLM, SamplingParams

    llm = LLM(model=out_dir, dtype="float32", enforce_eager=True,
              distributed_executor_backend="uni", max_model_len=128, max_num_seqs=4)
    got = llm.generate([{"prompt_token_ids": [0, 1, 2]}],
                       SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
    ids = list(got[0].outputs[0].token_ids)
    print("vllm", ids, "hf", expected)
    sys.exit(0 if ids == expected else 1)
