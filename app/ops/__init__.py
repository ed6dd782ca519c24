"""Operations: the checks and repairs shared by the server's start-up and `prompthub doctor`."""
