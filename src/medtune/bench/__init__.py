"""Performance benchmark: ``python -m medtune.bench`` (``make bench``).

Measures, in one run and side by side, the figures the pipeline's design rests on,
and prints each as ``name: measured (target ...) PASS/MISS``:

1. **encode once** (:mod:`.encode_once`) — training RFC, the linear probe and CoOp for
   several fractions x seeds from features encoded once, vs re-encoding the training images
   through the image encoder every epoch: as the CLIPath public code does it (per-image PIL
   transform, autograd through the unfrozen encoder; :mod:`.public_code`) and as re-encoding
   alone. All paths run the same methods, hyperparameters (the validated ``config/config.yaml``),
   subsets and seeds on a small synthetic dataset, and all are timed here; nothing is extrapolated.
2. **corrupted-evaluation throughput** (:mod:`.corrupt_throughput`) —
   :func:`medtune.encode.encode_images` over every condition of every suite,
   :data:`medtune.conditions.ALL_CONDITIONS` (corrupt + encode on the device from the uint8 store,
   batched) as a fraction of the bare encoder's forward rate on the same, already prepared batches,
   the two interleaved condition by condition so that the machine's drift falls on both alike.
3. **DAG build** (:mod:`.dag`) — ``snakemake -n`` on the full paper config, and a no-op ``-n``
   on the embedded default after a completed run.
4. **embedded default end to end** (:mod:`.end_to_end`) — from Snakemake's benchmark files of
   the last ``make run``: summed job seconds, per-rule totals, the share spent starting Python
   and importing torch/open_clip (``startup_share``), and the run's wall time from its log.
5. **scaling** (:mod:`.scaling`) — training seconds per run vs training fraction, from each
   run's ``train.json`` (its labels and ``wall_seconds``; one job fits every fraction of a
   seed), with a plot.
6. **linear-probe path** (:mod:`.linear_probe_path`) — the linear probe's regularisation path
   (Newton from the nearest C's solution) against the cold scikit-learn sweep it replaced, same
   search and selection, at 50 % of the embedded default and at the scale rehearsal's PCam size.

Shared pieces: :mod:`.figure` (targets, PASS/MISS), :mod:`.inputs` (random backbone, synthetic
store, method settings), :mod:`.machine`, :mod:`.snakemake_cli` and :mod:`.snakemake_logs`
(driving Snakemake, reading its benchmark files and logs), :mod:`.summary` (output files),
:mod:`.cli` (the command line).

Targets live in :mod:`.figure` and in the output; the tests only check that the measurements
run. Results go to ``results/bench/*.json`` and ``results/bench/summary.md``.
"""
