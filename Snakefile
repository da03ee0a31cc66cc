# AdvDistill: raw datasets -> teacher samples -> scored groups -> students -> evaluation -> report.
from snakemake.utils import min_version

from advdistill.planning import checked_config_file

min_version("9.0")


# The embedded default, read strictly (a YAML error names its line and column). Config files given with
# --configfile replace it instead of being merged into it, so that no dataset or experiment of the default
# is silently added to the run they describe.
if not workflow.overwrite_configfiles:

    configfile: checked_config_file("config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/bootstrap.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        final_outputs(),
    default_target: True


check_profile_resources()
