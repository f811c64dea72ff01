"""What `avl bench`, `avl bench-faces` and `avl bench-gpu` measure (the stages in stages/bench*.py run them)."""
