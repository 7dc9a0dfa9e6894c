"""Write a tiny Llama-shaped model directory: config.json, a byte-level BPE tokenizer, a chat template.

No weights: vLLM serves it with --load-format dummy. Everything here is deterministic: a fixed
built-in corpus, single-threaded tokenizer training, sorted JSON.

Usage: make_tiny_model.py DIR [CONFIG.json]   (CONFIG: the target's model.config, merged over
the defaults below; its vocab_size sizes the tokenizer)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VOCAB = 512
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": VOCAB,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 3,
}

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<s>' + message['role'] + '\n' + message['content'] + '</s>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<s>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today?",
    "A small model for testing a serving stack: it answers with random tokens.",
    "user assistant system: the roles of a chat conversation.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 and symbols {}[]()<>=+-*/.,;:!?\"'",
    "Reproducible builds give the same bytes from the same inputs, every time.",
    "vLLM serves large language models; nginx guards the gateway; Open WebUI chats.",
] * 20
# enough distinct character pairs for the trainer to reach the full vocabulary
_SYLLABLES = ["ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "ve", "zu", "an", "el", "ir", "os", "ub"]
CORPUS += [" ".join(a + b + c for b in _SYLLABLES for c in _SYLLABLES) for a in _SYLLABLES]


def build_tokenizer(vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        min_frequency=1,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


def main(out: str, config_file: str | None = None) -> None:
    from transformers import PreTrainedTokenizerFast

    config = dict(CONFIG)
    if config_file:
        config.update(json.loads(Path(config_file).read_text()))
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(int(config["vocab_size"])),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(d))
    (d / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    # re-serialize JSON files with sorted keys so their bytes do not depend on dict order
    for p in sorted(d.glob("*.json")):
        data = json.loads(p.read_text())
        p.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    for p in sorted(d.iterdir()):
        os.chmod(p, 0o644)
    print("\n".join(sorted(p.name for p in d.iterdir())))


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: make_tiny_model.py DIR [CONFIG.json]")
    main(*sys.argv[1:])
