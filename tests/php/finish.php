<?php
// Answers ?n= bytes of "f", ends the request with fastcgi_finish_request (the response is
// complete for the web server; with a new connection per request, PHP-FPM closes it), then
// keeps working for 5 ms.
$n = (int)($_GET['n'] ?? 0);
echo str_repeat("f", $n), "\n";
fastcgi_finish_request();
usleep(5000);
