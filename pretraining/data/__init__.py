"""Data: corpus readers, sentence splitting, sample packing, masking, HDF5 shards, collator.
May import the root helpers only (errors, atomic, outputs, resources); never model/, checkpoints/ or
the packages above them.

Modules (import what you need; nothing heavy is imported here):

* :mod:`~pretraining.data.corpus` -- documents from Wikipedia (Hub or offline) and local files
* :mod:`~pretraining.data.text`, :mod:`~pretraining.data.wikitext` -- cleaning, sentences, wiki markup
* :mod:`~pretraining.data.tokenization` -- the fast tokenizer and per-chunk tokenizing
* :mod:`~pretraining.data.samples` -- packing one document's sentences into samples (optional NSP)
* :mod:`~pretraining.data.masking` -- 80/10/10 masking, shared by static preparation and the collator
* :mod:`~pretraining.data.shards` -- ``list_shards``, ``read_shard``, ``write_shard``, ``read_manifest``
* :mod:`~pretraining.data.collator` -- ``PretrainingCollator`` (batches of shard rows -> tensors)
* :mod:`~pretraining.data.prepare` -- prepare_dataset.py's pipeline; its flags in
  :mod:`~pretraining.data.prepare_args` (``PrepareArguments``, ``apply_defaults``)
"""
