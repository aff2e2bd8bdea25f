# medtune: CLIP adaptation for pathology and medical images.
# Validates the config, then includes one rule file per stage; nothing else lives here.

import os
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from medtune import plan  # noqa: E402  (pure Python: keeps DAG building fast)

# --configfile replaces the embedded default instead of being merged into it, so a
# paper config never inherits the synthetic datasets.
if not workflow.overwrite_configfiles:

    configfile: Path(workflow.basedir) / "config" / "config.yaml"


try:
    for path in workflow.configfiles:
        plan.check_config_file(path)
    config = plan.validate(config)
except plan.ConfigError as err:
    sys.exit(f"medtune: {err}")
# once, when the DAG is built: each (method, backbone) pair the plan leaves out, and why (not again
# in every job's log where a cluster job parses this file anew)
if workflow.is_main_process:
    for line in plan.skip_messages(config):
        print(f"medtune: {line}", file=sys.stderr)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/subsample.smk"
include: "workflow/rules/encode.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/zeroshot.smk"
include: "workflow/rules/robustness.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_outputs(),
