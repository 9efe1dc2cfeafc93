<?php
// Sends a line, then sleeps ?s= seconds: longer than the pool's request_terminate_timeout,
// so PHP-FPM's master kills the child mid-request, with its request's last record unread.
$s = (float)($_GET['s'] ?? 0);
echo "start\n";
flush();
usleep((int)($s * 1000000));
echo "done\n";
