"""The diagnostics page (/ui) in a real browser."""
