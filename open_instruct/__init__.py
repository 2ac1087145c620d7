"""The fine-tuning / merging / evaluation harness around PRoLoRA (open-instruct lineage)."""

from open_instruct.cli import quiet_library_noise

quiet_library_noise()  # before any submodule imports peft (and with it bitsandbytes); see open_instruct.cli
