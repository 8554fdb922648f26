"""PDL in trainers other than TRL's `SFTTrainer`, each in a module of its own that the library never imports."""
