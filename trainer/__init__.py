"""emergence-lab's training side: models, the LightningModule, the entry point and callbacks."""
