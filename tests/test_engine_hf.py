"""The HF engine trains the pad token's embedding when the pad id is a real token (e.g. SmolLM2's
pad = eos = <|im_end|>), as megatron-core's embedding (no padding row) does."""
from __future__ import annotations

import torch


def test_pad_token_embedding_gets_its_gradient():
    from transformers import LlamaConfig, LlamaForCausalLM

    from mixed_r1.engine import HFEngine, LossConfig, PolicyBatch
    from mixed_r1.engine.update import PolicyLoss

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True,
                      pad_token_id=2, eos_token_id=2, bos_token_id=1)
    model = LlamaForCausalLM(cfg).float()
    assert model.get_input_embeddings().padding_idx == 2  # what HF builds
    ids = torch.tensor([[5, 2, 7, 9, 2, 11]])  # token 2 is a real token here (end of a turn)
    batch = PolicyBatch(inputs={"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                        targets=ids[:, 3:], mask=torch.ones(1, 3), advantages=torch.ones(1))
    # independent reference: plain autograd through a copy whose embedding has no padding row
    ref = LlamaForCausalLM(cfg).float()
    ref.load_state_dict(model.state_dict())
    ref.get_input_embeddings().padding_idx = None
    logits = ref(**batch.inputs).logits[:, 2:5].float()
    logp = torch.log_softmax(logits, -1).gather(-1, batch.targets[..., None])[..., 0]
    (-logp.mean()).backward()  # dapo loss at ratio 1, advantage 1: the mean NLL's gradient
    want = ref.get_input_embeddings().weight.grad[2]
    engine = HFEngine(model)
    engine.forward_backward([batch], PolicyLoss(LossConfig()))
    got = engine.model.get_input_embeddings().weight.grad[2]
    assert float(want.norm()) > 1e-3
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
