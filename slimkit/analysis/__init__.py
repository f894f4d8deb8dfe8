"""Analysis tools: per-layer pruning sensitivity, compression reports and file inspection."""
